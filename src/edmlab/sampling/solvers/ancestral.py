"""Stochastic samplers in σ-time that add fresh noise at every step: Euler ancestral, DPM-Solver++(2M) SDE and
(3M) SDE, the η-family of k-diffusion's ``sample_euler_ancestral``, ``sample_dpmpp_2m_sde``, ``sample_dpmpp_3m_sde``.

Each step is written as coefficients computed on the host from the grid alone, before the loop:

    x_{i+1} = a_i·x_i + Σ_j b_ij·D_{i−j} + c_i·z_i,      z_i = ``noise_like(x, generator)``,

with D_k = D(x_k; σ_k), newest first; a step with c_i = 0 draws no noise. η = 0 makes every one of them
deterministic (no draws): Euler ancestral is then ``euler``, the 2M SDE (midpoint) ``dpmpp_2m``.

The last level: as k-diffusion, the step from σ_{N−1} to σ = 0 adds no noise and returns D(x; σ_{N−1}); here it is
edmlab's ``final_step`` ("euler" and "denoise" are that value, "none" stops at σ_{N−1} with the noise of the step
into it), so NFE = (N − 1) + 1 = N, k-diffusion's count over the same N levels. The noise is one draw per step from
``generator`` (per-sample streams with ``edmlab.SeedStreams``), not k-diffusion's default Brownian tree of the SDE
samplers: same seeds give the same sample whatever the batch, but not across step counts.
"""
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from edmlab.sampling.rng import noise_like
from edmlab.sampling.solvers.calls import DenoiserCalls, Solver, check_final_step, finish_in_sigma

SOLVER_TYPES = ("midpoint", "heun")


@dataclass(frozen=True)
class NoisyStep:
    """One step's a_i, b_ij (newest D first) and noise coefficient c_i of the module docstring's update."""

    a: float
    b: tuple
    c: float


def check_eta(value, solver=None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"eta must be a number >= 0 (0: the ODE solver, 1: k-diffusion's default), got eta={value!r}")
    return float(value)


def check_noise_scale(value, solver=None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"noise_scale must be a number >= 0 (1: the SDE's own noise; k-diffusion's s_noise), "
                         f"got noise_scale={value!r}")
    return float(value)


def check_solver_type(value, solver=None) -> str:
    if value not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {list(SOLVER_TYPES)} (dpmpp_2m_sde's 2nd-order term), "
                         f"got solver_type={value!r}")
    return value


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step from σ to σ' = σ_next: σ_up = min(σ', η·√(σ'²(σ² − σ'²)/σ²)),
    σ_down = √(σ'² − σ_up²). At η = 1 the step D + (σ_down/σ)(x − D) + σ_up·z draws from the DDPM posterior
    q(x_σ' | x_σ, x_0 = D) of the VE process (Ho et al. 2020, Eq. 7); for any η it is DDIM's step (Song, Meng &
    Ermon 2021, Eq. 12 with σ_t(η) of Eq. 16) written in σ, as k-diffusion's ``get_ancestral_step``."""
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def _run(denoiser, x, sigmas: list[float], steps: list[NoisyStep], final_step: str, afs, generator, callback,
         denoiser_kwargs) -> torch.Tensor:
    model = DenoiserCalls(denoiser, denoiser_kwargs, afs)
    history = deque(maxlen=max((len(s.b) for s in steps), default=1))
    for i, step in enumerate(steps):
        denoised = model(x, sigmas[i], first=i == 0)
        history.appendleft(denoised)
        x_next = x * step.a
        for coefficient, d in zip(step.b, history):
            x_next.add_(d, alpha=coefficient)
        if step.c > 0:
            x_next.add_(noise_like(x, generator), alpha=step.c)
        x = x_next
        if callback is not None:
            callback(dict(i=i, sigma=sigmas[i], sigma_next=sigmas[i + 1], x=x, denoised=denoised))
    return finish_in_sigma(model, x, sigmas, len(steps), final_step, callback)


def _levels(sigmas, final_step):
    check_final_step(final_step)
    sigmas = [float(s) for s in sigmas]
    return sigmas, len(sigmas) - 2  # steps between the N levels; the last level to σ = 0 is the final step


def sample_euler_ancestral(denoiser, x, sigmas, *, eta: float = 1.0, noise_scale: float = 1.0,
                           final_step: str = "euler", afs=None, generator=None, callback=None,
                           denoiser_kwargs=None) -> torch.Tensor:
    """Euler ancestral: an Euler step of EDM's ODE to σ_down, then noise of std σ_up (``ancestral_step``):
    x_{i+1} = x_i + (σ_down − σ_i)·(x_i − D_i)/σ_i + noise_scale·σ_up·z_i. η = 0 is ``euler`` in σ-time."""
    sigmas, n = _levels(sigmas, final_step)
    eta, noise_scale = check_eta(eta), check_noise_scale(noise_scale)
    steps = []
    for i in range(n):
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        k = (sigma_down - sigmas[i]) / sigmas[i]
        steps.append(NoisyStep(1 + k, (-k,), noise_scale * sigma_up))
    return _run(denoiser, x, sigmas, steps, final_step, afs, generator, callback, denoiser_kwargs)


def _sde_step(sigma: float, sigma_next: float, eta: float, noise_scale: float) -> tuple[float, float, float, float]:
    """The first-order step of the η-SDE in λ = −log σ, dx = (1 + η)(D − x)dλ + σ√(2η)·dW (EDM Eq. 6 with
    β(t) = η·σ̇/σ; η = 1 is the reverse SDE), solved exactly for D constant (SDE-DPM-Solver++1, Lu et al. 2022b,
    Sec. 5): h = λ_{i+1} − λ_i, H = (1 + η)h,
    x_{i+1} = e^{−H}·x_i + (1 − e^{−H})·D_i + σ_{i+1}√(1 − e^{−2ηh})·z_i.  Returns (h, H, e^{−H}, c_i)."""
    h = math.log(sigma) - math.log(sigma_next)
    H = (1 + eta) * h
    return h, H, math.exp(-H), noise_scale * sigma_next * math.sqrt(-math.expm1(-2 * eta * h))


def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, eta: float = 1.0, noise_scale: float = 1.0,
                        solver_type: str = "midpoint", final_step: str = "euler", afs=None, generator=None,
                        callback=None, denoiser_kwargs=None) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, Sec. 5, SDE-DPM-Solver++(2M); k-diffusion's η-family): the
    first-order step of ``_sde_step`` plus, from the second step, w·(D_i − D_{i−1})/r with r = h_{i−1}/h_i and
      ``midpoint``: w = ½(1 − e^{−H})            (η = 0: ``dpmpp_2m``, Algorithm 2),
      ``heun``    : w = 1 − (1 − e^{−H})/H       (the exact integral of D extrapolated linearly in λ).
    The first step is first order."""
    sigmas, n = _levels(sigmas, final_step)
    eta, noise_scale = check_eta(eta), check_noise_scale(noise_scale)
    solver_type = check_solver_type(solver_type)
    steps, h_last = [], None
    for i in range(n):
        h, H, decay, c = _sde_step(sigmas[i], sigmas[i + 1], eta, noise_scale)
        b = [1 - decay]
        if h_last is not None:
            w = 0.5 * -math.expm1(-H) if solver_type == "midpoint" else 1 + math.expm1(-H) / H
            w /= h_last / h
            b = [b[0] + w, -w]
        steps.append(NoisyStep(decay, tuple(b), c))
        h_last = h
    return _run(denoiser, x, sigmas, steps, final_step, afs, generator, callback, denoiser_kwargs)


def sample_dpmpp_3m_sde(denoiser, x, sigmas, *, eta: float = 1.0, noise_scale: float = 1.0,
                        final_step: str = "euler", afs=None, generator=None, callback=None,
                        denoiser_kwargs=None) -> torch.Tensor:
    """DPM-Solver++(3M) SDE as k-diffusion defines it: the first-order step of ``_sde_step`` plus, with
    φ_2 = 1 − (1 − e^{−H})/H and φ_3 = φ_2/H − ½ (of H = (1 + η)h), r_k = h_{i−1−k}/h_i,
      2nd step: + φ_2·(D_i − D_{i−1})/r_0,
      then    : + φ_2·D1 − φ_3·D2,  D1_k = (D_{i−k} − D_{i−k−1})/r_k, D1 = D1_0 + r_0/(r_0 + r_1)·(D1_0 − D1_1),
                D2 = (D1_0 − D1_1)/(r_0 + r_1) ≈ h²D''/2.
    So at η = 0 it is not ``dpmpp_3m``: its 2nd step is the exact linear integral (φ_2), not the 2M midpoint
    (½φ_1), and D2 is weighted by φ_3 where the exact integral of the quadratic interpolant has 2φ_3 (``dpmpp_3m``;
    see its docstring): kept as k-diffusion has it, so that the samples are the ones people draw with it."""
    sigmas, n = _levels(sigmas, final_step)
    eta, noise_scale = check_eta(eta), check_noise_scale(noise_scale)
    steps, h_past = [], []
    for i in range(n):
        h, H, decay, c = _sde_step(sigmas[i], sigmas[i + 1], eta, noise_scale)
        phi_2 = 1 + math.expm1(-H) / H
        b = np.zeros(min(i + 1, 3))
        b[0] = 1 - decay
        if len(h_past) == 1:
            b += phi_2 * np.array([1, -1]) / (h_past[0] / h)
        elif len(h_past) >= 2:
            r0, r1 = h_past[-1] / h, h_past[-2] / h
            d1_0, d1_1 = np.array([1, -1, 0]) / r0, np.array([0, 1, -1]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            b += phi_2 * d1 - (phi_2 / H - 0.5) * d2
        steps.append(NoisyStep(decay, tuple(float(v) for v in b), c))
        h_past.append(h)
    return _run(denoiser, x, sigmas, steps, final_step, afs, generator, callback, denoiser_kwargs)


EULER_ANCESTRAL = Solver("euler_ancestral", sample_euler_ancestral, options=("eta", "noise_scale"),
                         needs=("generator",))
DPMPP_2M_SDE = Solver("dpmpp_2m_sde", sample_dpmpp_2m_sde, order=2, options=("eta", "noise_scale", "solver_type"),
                      needs=("generator",))
DPMPP_3M_SDE = Solver("dpmpp_3m_sde", sample_dpmpp_3m_sde, order=3, options=("eta", "noise_scale"),
                      needs=("generator",))
