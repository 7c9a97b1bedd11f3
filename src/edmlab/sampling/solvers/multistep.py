"""Multistep solvers of EDM's ODE dx/dσ = (x − D(x; σ))/σ: one network call per step, reusing past ones.

Each solver writes its update as coefficients computed on the host from the grid alone, before the loop:

    x_{i+1} = a_i·x_i + Σ_j b_ij·m_{i−j}          (predictor)
    x_{i+1} = a_i·x_i + c_i0·m_{i+1} + Σ_j c_i,j+1·m_{i−j}   (corrector, UniPC only: m_{i+1} at the predicted x)

with m = D(x; σ) (data prediction) or m = ε = (x − D)/σ = dx/dσ, so the loop is tensor arithmetic only: no
per-step host sync. Order rises 1, 2, … from the first step as history accumulates. All of them integrate in σ
(or λ = −log σ) themselves, so they are invariant to σ(t), s(t): they take the noise levels σ_0 > … > σ_N = 0.
"""
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from edmlab.design.schedules import VPSchedule
from edmlab.sampling.solvers.calls import DenoiserCalls, Solver, check_final_step, finish_in_sigma, identity


@dataclass(frozen=True)
class Step:
    """One step's coefficients a_i, b_ij and (UniPC) c_ij of the module docstring's update, newest history first."""

    a: float
    b: tuple
    c: tuple | None = None


def _run(denoiser, x, sigmas: list[float], steps: list[Step], eps_form: bool, final_step: str, afs, callback,
         denoiser_kwargs) -> torch.Tensor:
    model = DenoiserCalls(denoiser, denoiser_kwargs, afs)
    check_final_step(final_step)
    history = deque(maxlen=max((len(s.b) for s in steps), default=1))
    m = denoised = None
    for i, step in enumerate(steps):
        if m is None:
            denoised = model(x, sigmas[i], first=i == 0)
            m = (x - denoised) / sigmas[i] if eps_form else denoised
        history.appendleft(m)
        x_next = _combine(step.a, x, step.b, history)
        m = None
        if step.c is not None:
            denoised = model(x_next, sigmas[i + 1])
            m = (x_next - denoised) / sigmas[i + 1] if eps_form else denoised
            x_next = _combine(step.a, x, step.c[1:], history).add_(m, alpha=step.c[0])
        x = x_next
        if callback is not None:
            callback(dict(i=i, sigma=sigmas[i], sigma_next=sigmas[i + 1], x=x, denoised=denoised))
    return finish_in_sigma(model, x, sigmas, len(steps), final_step, callback)


def _combine(a: float, x, coefficients, history):
    out = x * a
    for coefficient, m in zip(coefficients, history):
        out.add_(m, alpha=coefficient)
    return out


def _levels(sigmas):
    sigmas = [float(s) for s in sigmas]
    return sigmas, len(sigmas) - 2  # steps between the N levels; the last level to σ = 0 is the final step


# Adams–Bashforth coefficients for equal steps, newest first (Hairer, Nørsett & Wanner I, Table III.1.1).
ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def sample_ipndm(denoiser, x, sigmas, *, max_order: int = 4, final_step: str = "euler",
                 afs=None, callback=None, denoiser_kwargs=None) -> torch.Tensor:
    """iPNDM (Zhang & Chen 2023, DEIS paper Sec. 5 / App. "improved PNDM"; Zhou et al. 2024's EDM version):
    Adams–Bashforth with the equal-step coefficients on dx/dσ = ε = (x − D)/σ, order min(i + 1, max_order) ≤ 4:
    x_{i+1} = x_i + (σ_{i+1} − σ_i)·Σ_j β_j^{(k)} ε_{i−j}. On an unequal grid (EDM's ρ = 7) the fixed coefficients
    make it 2nd order asymptotically; ``ipndm_v`` has the variable-step ones."""
    sigmas, n = _levels(sigmas)
    order = IPNDM.check_order(max_order)
    steps = [Step(1.0, tuple((sigmas[i + 1] - sigmas[i]) * c for c in ADAMS_BASHFORTH[min(i + 1, order)]))
             for i in range(n)]
    return _run(denoiser, x, sigmas, steps, True, final_step, afs, callback, denoiser_kwargs)


GAUSS_LEGENDRE_16 = np.polynomial.legendre.leggauss(16)


def _lagrange_integrals(nodes, lo: float, hi: float, warp) -> tuple:
    """∫_lo^hi ℓ_j(warp(σ)) dσ for the Lagrange basis ℓ_j over ``nodes`` (in the warped variable), by composite
    Gauss–Legendre in log σ (16 nodes per piece of at most ½ in log σ: exact to rounding for these integrands)."""
    u_lo, u_hi = math.log(lo), math.log(hi)
    pieces = max(1, math.ceil(abs(u_hi - u_lo) / 0.5))
    xi, w = GAUSS_LEGENDRE_16
    edges = np.linspace(u_lo, u_hi, pieces + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    u = ((edges[1:] + edges[:-1])[:, None] / 2 + half * xi).ravel()
    weights = (half * w).ravel() * np.exp(u)
    t = warp(np.exp(u))
    nodes = np.asarray(nodes, dtype=np.float64)
    out = []
    for j, node in enumerate(nodes):
        others = np.delete(nodes, j)
        out.append(float(np.sum(weights * np.prod((t[:, None] - others) / (node - others), axis=1))))
    return tuple(out)


def sample_ipndm_v(denoiser, x, sigmas, *, max_order: int = 4, final_step: str = "euler",
                   afs=None, callback=None, denoiser_kwargs=None) -> torch.Tensor:
    """iPNDM with variable-step coefficients (Zhou et al. 2024, "iPNDM_v"): Adams–Bashforth on dx/dσ whose
    weights integrate the Lagrange polynomial through the last k = min(i + 1, max_order) ≤ 4 points (σ_{i−j}, ε_{i−j}):
    x_{i+1} = x_i + Σ_j ε_{i−j}·∫_{σ_i}^{σ_{i+1}} ℓ_j(σ) dσ (Hairer, Nørsett & Wanner I, Eq. III.5.3). Order k on
    any grid."""
    sigmas, n = _levels(sigmas)
    order = IPNDM_V.check_order(max_order)
    steps = [Step(1.0, _lagrange_integrals([sigmas[i - j] for j in range(min(i + 1, order))], sigmas[i],
                                           sigmas[i + 1], identity)) for i in range(n)]
    return _run(denoiser, x, sigmas, steps, True, final_step, afs, callback, denoiser_kwargs)


def deis_time(sigma):
    """DEIS's time variable: the VP time σ⁻¹_vp(σ) of the standard VP schedule (β_d = 19.9, β_min = 0.1)."""
    return VPSchedule().sigma_inv(torch.as_tensor(sigma, dtype=torch.float64)).numpy()


def sample_deis(denoiser, x, sigmas, *, max_order: int = 3, final_step: str = "euler",
                afs=None, callback=None, denoiser_kwargs=None) -> torch.Tensor:
    """DEIS, tAB variant (Zhang & Chen 2023, Eq. 14): ε is extrapolated by the Lagrange polynomial in the VP time
    t(σ) (``deis_time``) through the last k = min(i + 1, max_order) ≤ 3 points, and the
    exponential integrator of EDM's ODE (σ(t) = t: x_{i+1} = x_i + ∫ ε dσ) integrates it exactly:
    x_{i+1} = x_i + Σ_j ε_{i−j}·∫_{t_i}^{t_{i+1}} σ'(τ)·ℓ_j(τ) dτ."""
    sigmas, n = _levels(sigmas)
    order = DEIS.check_order(max_order)
    steps = [Step(1.0, _lagrange_integrals([deis_time(sigmas[i - j]) for j in range(min(i + 1, order))],
                                           sigmas[i], sigmas[i + 1], deis_time)) for i in range(n)]
    return _run(denoiser, x, sigmas, steps, True, final_step, afs, callback, denoiser_kwargs)


def _dpmpp_steps(sigmas: list[float], n: int, order: int) -> list[Step]:
    """DPM-Solver++ multistep in λ = −log σ with data prediction (Lu et al. 2022b, Eq. 9 with α_t = 1, σ_t = σ:
    x_{i+1} = (σ_{i+1}/σ_i)·x_i + σ_{i+1}∫_{λ_i}^{λ_{i+1}} e^λ D dλ, D replaced by its polynomial interpolant).
    h = λ_{i+1} − λ_i, r_k = h_{i−k}/h, φ_1 = e^{−h} − 1, φ_2 = φ_1/h + 1, φ_3 = φ_2/h − ½:
      1st: x_{i+1} = (σ_{i+1}/σ_i)·x_i − φ_1·D_i
      2M : … − φ_1·D_i − ½φ_1·(D_i − D_{i−1})/r_0                        (Algorithm 2)
      3M : … − φ_1·D_i + φ_2·D1 − 2φ_3·D2, D1_k = (m_k − m_{k+1})/r_k, D1 = D1_0 + r_0/(r_0 + r_1)·(D1_0 − D1_1),
           D2 = (D1_0 − D1_1)/(r_0 + r_1) ≈ h²D''/2: the exact integral of the quadratic interpolant.
    The reference code (dpm-solver's ``multistep_dpm_solver_third_update``, k-diffusion's ``sample_dpmpp_3m_sde``
    at η = 0) weights D2 by φ_3, not 2φ_3; measured on the smooth-mixture bench that makes it 2nd order (slope 2.0),
    while 2φ_3 gives the 3rd order the method is named for (tests/test_solvers_multistep.py)."""
    lam = [-math.log(s) for s in sigmas[: n + 1]]
    steps = []
    for i in range(n):
        h = lam[i + 1] - lam[i]
        phi_1 = math.expm1(-h)
        k = min(i + 1, order)
        b = np.zeros(k)
        b[0] = -phi_1
        if k == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            b += -0.5 * phi_1 * np.array([1, -1]) / r0
        elif k == 3:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = np.array([1, -1, 0]) / r0, np.array([0, 1, -1]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = phi_1 / h + 1
            phi_3 = phi_2 / h - 0.5
            b += phi_2 * d1 - 2 * phi_3 * d2
        steps.append(Step(sigmas[i + 1] / sigmas[i], tuple(float(v) for v in b)))
    return steps


def sample_dpmpp_2m(denoiser, x, sigmas, *, final_step: str = "euler", afs=None,
                    callback=None, denoiser_kwargs=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2; ``_dpmpp_steps``): 2nd order, the first step 1st order.
    An exponential integrator in λ = −log σ."""
    sigmas, n = _levels(sigmas)
    return _run(denoiser, x, sigmas, _dpmpp_steps(sigmas, n, 2), False, final_step, afs, callback, denoiser_kwargs)


def sample_dpmpp_3m(denoiser, x, sigmas, *, final_step: str = "euler", afs=None,
                    callback=None, denoiser_kwargs=None) -> torch.Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022b, App. B, multistep third-order update; ``_dpmpp_steps``): 3rd order
    after a 1st- and a 2M step."""
    sigmas, n = _levels(sigmas)
    return _run(denoiser, x, sigmas, _dpmpp_steps(sigmas, n, 3), False, final_step, afs, callback, denoiser_kwargs)


def _unipc_steps(sigmas: list[float], n: int, order: int) -> list[Step]:
    """UniPC with B(h) = e^{h} − 1 ("bh2"; Zhao et al. 2023, Algorithms 1–3, data prediction, hh = −h):
    predictor UniP-k: x̃ = (σ_{i+1}/σ_i)·x_i − (e^{−h} − 1)·m_0 − B(h)·Σ_k ρ^p_k·D_k, D_k = (m_k − m_0)/r_k,
    r_k = (λ_{i−k} − λ_i)/h; corrector UniC: the same with ρ^c and the new m_{i+1} at x̃ (r = 1).
    ρ solves R·ρ = g, R_{pk} = r_k^{p−1}, g_p = p!·φ_{p+1}(hh)/B(h) (ρ^p = ½ at k = 2, ρ^c = ½ at k = 1)."""
    lam = [-math.log(s) for s in sigmas[: n + 1]]
    steps = []
    for i in range(n):
        k = min(i + 1, order)
        h = lam[i + 1] - lam[i]
        hh = -h
        h_phi_1 = math.expm1(hh)
        B_h = math.expm1(hh)
        r = np.array([(lam[i - j] - lam[i]) / h for j in range(1, k)] + [1.0])
        g, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
        for p in range(1, k + 1):
            g.append(h_phi_k * factorial / B_h)
            factorial *= p + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        R = np.stack([r ** (p - 1) for p in range(1, k + 1)])
        g = np.array(g)
        rho_p = np.array([0.5]) if k == 2 else (np.linalg.solve(R[:-1, :-1], g[:-1]) if k > 2 else np.zeros(0))
        rho_c = np.array([0.5]) if k == 1 else np.linalg.solve(R, g)
        b = np.zeros(k)
        b[0] = -h_phi_1
        for j in range(1, k):  # D_j = (m_j − m_0)/r_j
            b[j] -= B_h * rho_p[j - 1] / r[j - 1]
            b[0] += B_h * rho_p[j - 1] / r[j - 1]
        c = np.zeros(k + 1)  # m_{i+1}, m_i, m_{i−1}, …
        c[1] = -h_phi_1
        for j in range(1, k):
            c[j + 1] -= B_h * rho_c[j - 1] / r[j - 1]
            c[1] += B_h * rho_c[j - 1] / r[j - 1]
        c[0] -= B_h * rho_c[-1]
        c[1] += B_h * rho_c[-1]
        corrector = tuple(float(v) for v in c) if i < n - 1 else None
        steps.append(Step(sigmas[i + 1] / sigmas[i], tuple(float(v) for v in b), corrector))
    return steps


def sample_unipc(denoiser, x, sigmas, *, max_order: int = 3, final_step: str = "euler",
                 afs=None, callback=None, denoiser_kwargs=None) -> torch.Tensor:
    """UniPC-bh2 (Zhao et al. 2023; ``_unipc_steps``): predictor of order k = min(i + 1, max_order) ≤ 3 and the
    corrector UniC raising it by one, at no extra call (the corrector's D at the predicted point is the next
    step's history); the last step is not corrected (as UniPC)."""
    sigmas, n = _levels(sigmas)
    order = UNIPC.check_order(max_order)
    return _run(denoiser, x, sigmas, _unipc_steps(sigmas, n, order), False, final_step, afs, callback,
                denoiser_kwargs)


IPNDM = Solver("ipndm", sample_ipndm, order=4, max_order=4, options=("max_order",))
IPNDM_V = Solver("ipndm_v", sample_ipndm_v, order=4, max_order=4, options=("max_order",))
DEIS = Solver("deis", sample_deis, order=3, max_order=3, options=("max_order",))
DPMPP_2M = Solver("dpmpp_2m", sample_dpmpp_2m, order=2)
DPMPP_3M = Solver("dpmpp_3m", sample_dpmpp_3m, order=3)
UNIPC = Solver("unipc", sample_unipc, order=3, max_order=3, options=("max_order",))
