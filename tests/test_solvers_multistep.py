"""The multistep and adaptive solvers against independent transcriptions of their papers' updates, their orders of
convergence on a smooth mixture, exact NFE accounting, and the options every solver honours."""
import functools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import edmlab

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
MIX = edmlab.GaussianMixture([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.3]], [[0.5, 0.6, 0.4], [0.45, 0.5, 0.55]], [0.4, 0.6])
MULTISTEP = ["ipndm", "ipndm_v", "deis", "dpmpp_2m", "dpmpp_3m", "unipc"]
FIXED = ["euler", "heun", *MULTISTEP]


def latents(n, dim=3, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def edm_levels(N, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM Eq. 5."""
    return [(sigma_max ** (1 / rho) + i / (N - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
            for i in range(N)]


def D(x, sigma):
    return MIX(x, torch.full((len(x),), sigma, dtype=torch.float64))


class Net:
    """MIX as a network would present it: optional sigma_data, round_sigma and σ range; records every call."""

    def __init__(self, mix=MIX, sigma_data=None, levels=None):
        self.mix, self.calls, self.sigmas = mix, 0, []
        if sigma_data is not None:
            self.sigma_data = sigma_data
        if levels is not None:
            self.levels = torch.as_tensor(levels, dtype=torch.float64)
            self.sigma_min, self.sigma_max = float(self.levels.min()), float(self.levels.max())
            self.round_sigma = self.nearest_level

    def nearest_level(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        index = (sigma.reshape(-1, 1) - self.levels).abs().argmin(1)
        return self.levels[index].reshape(sigma.shape)

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        self.sigmas += sigma.tolist()
        return self.mix(x, sigma, **kwargs)


def normalized_weights(nodes, moments):
    """w with Σ_j w_j·τ_j^p = moments[p], p < k: the interpolatory quadrature through the nodes τ_j."""
    V = np.array([[t**p for t in nodes] for p in range(len(nodes))])
    return np.linalg.solve(V, np.array(moments))


# --- transcriptions, each stopping at σ_min (final_step="none") -----------------------------------------------

def ipndm_paper(x, sig, max_order=4):
    """Zhang & Chen 2023, iPNDM: Adams–Bashforth with the equal-step coefficients on ε = (x − D)/σ."""
    eps = []
    for i in range(len(sig) - 1):
        eps.append((x - D(x, sig[i])) / sig[i])
        k = min(len(eps), max_order)
        if k == 1:
            d = eps[-1]
        elif k == 2:
            d = (3 * eps[-1] - eps[-2]) / 2
        elif k == 3:
            d = (23 * eps[-1] - 16 * eps[-2] + 5 * eps[-3]) / 12
        else:
            d = (55 * eps[-1] - 59 * eps[-2] + 37 * eps[-3] - 9 * eps[-4]) / 24
        x = x + (sig[i + 1] - sig[i]) * d
    return x


def ipndm_v_paper(x, sig, max_order=4):
    """Variable-step Adams–Bashforth in σ: weights exact for polynomials of degree < k (moment conditions)."""
    eps = []
    for i in range(len(sig) - 1):
        eps.append((x - D(x, sig[i])) / sig[i])
        k = min(len(eps), max_order)
        step = sig[i + 1] - sig[i]
        w = normalized_weights([(sig[i - j] - sig[i]) / step for j in range(k)], [1 / (p + 1) for p in range(k)])
        x = x + step * sum(w[j] * eps[-1 - j] for j in range(k))
    return x


def vp_sigma(t, beta_d=19.9, beta_min=0.1):
    return math.sqrt(math.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)


def vp_time(sigma, beta_d=19.9, beta_min=0.1):
    return (math.sqrt(beta_min**2 + 2 * beta_d * math.log(1 + sigma**2)) - beta_min) / beta_d


def deis_paper(x, sig, max_order=3):
    """DEIS tAB (Zhang & Chen 2023, Eq. 14) for σ(t) of VP: C_ij = ∫_{t_i}^{t_{i+1}} σ'(τ)·ℓ_j(τ) dτ."""
    def sigma_deriv(t, beta_d=19.9, beta_min=0.1):
        return 0.5 * (beta_min + beta_d * t) * (vp_sigma(t) + 1 / vp_sigma(t))

    t = [vp_time(s) for s in sig]
    eps = []
    for i in range(len(sig) - 1):
        eps.append((x - D(x, sig[i])) / sig[i])
        k = min(len(eps), max_order)
        dt = t[i + 1] - t[i]
        moments = [quad(lambda u, p=p: sigma_deriv(u) * ((u - t[i]) / dt) ** p, t[i], t[i + 1], epsabs=0,
                        epsrel=1e-13, limit=200)[0] for p in range(k)]
        w = normalized_weights([(t[i - j] - t[i]) / dt for j in range(k)], moments)
        x = x + sum(w[j] * eps[-1 - j] for j in range(k))
    return x


def dpmpp_2m_paper(x, sig):
    """DPM-Solver++(2M), Lu et al. 2022b Algorithm 2 (α_t = 1, σ_t = σ, λ = −log σ)."""
    old = None
    for i in range(len(sig) - 1):
        d = D(x, sig[i])
        h = math.log(sig[i] / sig[i + 1])
        if old is None:
            x = sig[i + 1] / sig[i] * x - math.expm1(-h) * d
        else:
            r = math.log(sig[i - 1] / sig[i]) / h
            x = sig[i + 1] / sig[i] * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * d - 1 / (2 * r) * old)
        old = d
    return x


def dpmpp_3m_paper(x, sig):
    """DPM-Solver++ multistep (Lu et al. 2022b, Eq. 9: x_t = σ_t/σ_s·x_s + σ_t∫_{λ_s}^{λ_t} e^λ D_λ dλ): the 1st-order
    step, a 2M step, then D_λ replaced by its quadratic interpolant through the last three (λ, D), integrated by
    60-point Gauss–Legendre."""
    lam = [-math.log(s) for s in sig]
    ds = []
    nodes, weights = np.polynomial.legendre.leggauss(60)
    for i in range(len(sig) - 1):
        ds.append(D(x, sig[i]))
        h = lam[i + 1] - lam[i]
        if len(ds) == 1:
            x = sig[i + 1] / sig[i] * x - math.expm1(-h) * ds[-1]
            continue
        if len(ds) == 2:
            r = (lam[i] - lam[i - 1]) / h
            x = sig[i + 1] / sig[i] * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * ds[-1] - 1 / (2 * r) * ds[-2])
            continue
        tau = (nodes + 1) * h / 2
        knots = [lam[i - j] - lam[i] for j in range(3)]
        integral = 0
        for j in range(3):
            basis = np.prod([(tau - knots[m]) / (knots[j] - knots[m]) for m in range(3) if m != j], axis=0)
            integral = integral + float(np.sum(weights * h / 2 * np.exp(tau - h) * basis)) * ds[-1 - j]
        x = sig[i + 1] / sig[i] * x + integral
    return x


def unipc_paper(x, sig, max_order=3):
    """UniPC-bh2 (Zhao et al. 2023, Algorithms 2–3 with data prediction; B(h) = e^{h} − 1 at hh = −h): UniP-k
    predictor, UniC corrector at every step but the last, its model output reused as the next step's."""
    lam = [-math.log(s) for s in sig]
    n = len(sig) - 1
    ms = [D(x, sig[0])]
    for i in range(n):
        p = min(i + 1, max_order)
        h = lam[i + 1] - lam[i]
        rks, D1s = [], []
        for k in range(1, p):
            rk = (lam[i - k] - lam[i]) / h
            rks.append(rk)
            D1s.append((ms[-(k + 1)] - ms[-1]) / rk)
        rks.append(1.0)
        hh = -h
        h_phi_1 = math.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        B_h = math.expm1(hh)
        R, b = [], []
        for k in range(1, p + 1):
            R.append([r ** (k - 1) for r in rks])
            b.append(h_phi_k * factorial / B_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        R, b = torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        x_ = sig[i + 1] / sig[i] * x - h_phi_1 * ms[-1]
        if D1s:
            rhos_p = [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            x_t = x_ - B_h * sum(r * d for r, d in zip(rhos_p, D1s))
        else:
            x_t = x_
        if i < n - 1:
            m_t = D(x_t, sig[i + 1])
            rhos_c = [0.5] if p == 1 else torch.linalg.solve(R, b).tolist()
            corr = sum(r * d for r, d in zip(rhos_c[:-1], D1s))
            x_t = x_ - B_h * (corr + rhos_c[-1] * (m_t - ms[-1]))
            ms.append(m_t)
        x = x_t
    return x


PAPERS = {"ipndm": ipndm_paper, "ipndm_v": ipndm_v_paper, "deis": deis_paper, "dpmpp_2m": dpmpp_2m_paper,
          "dpmpp_3m": dpmpp_3m_paper, "unipc": unipc_paper}


@pytest.mark.parametrize("solver,max_order", [("ipndm", 4), ("ipndm", 2), ("ipndm_v", 4), ("ipndm_v", 3),
                                              ("deis", 3), ("deis", 2), ("dpmpp_2m", None), ("dpmpp_3m", None),
                                              ("unipc", 3), ("unipc", 2), ("unipc", 1)])
def test_solver_equals_its_papers_update(solver, max_order):
    z = latents(20, seed=7)
    sig = edm_levels(9)
    order = {} if max_order is None else {"max_order": max_order}
    ours = edmlab.sample(MIX, z, solver=solver, num_steps=9, final_step="none", **order)
    theirs = PAPERS[solver](z * 80.0, sig, **order)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("solver", MULTISTEP)
def test_final_steps_are_one_call_from_sigma_min(solver):
    z = latents(10, seed=8)
    stop = edmlab.sample(MIX, z, solver=solver, num_steps=7, final_step="none")
    assert (stop - PAPERS[solver](z * 80.0, edm_levels(7))).abs().max() < 1e-10
    for final in ("euler", "denoise"):
        torch.testing.assert_close(edmlab.sample(MIX, z, solver=solver, num_steps=7, final_step=final),
                                   D(stop, 0.002), rtol=0, atol=1e-12)


@functools.cache
def smooth_bench():
    """A smooth 1-D mixture, 100 latents and their exact ODE solution at σ_min = 0.002."""
    gm = edmlab.GaussianMixture([[-1.0], [1.0]], [0.5, 0.5])
    z = latents(100, dim=1, seed=1)
    return gm, z, gm.ode_solution(z * 80.0, 80.0, 0.002)


@pytest.mark.parametrize("solver,kwargs,order,Ns", [
    ("ipndm", {}, 2, (32, 64, 128)),            # equal-step coefficients on the unequal ρ = 7 grid: 2nd order
    ("ipndm_v", {}, 4, (64, 128, 256)), ("deis", {}, 3, (64, 128, 256)), ("dpmpp_2m", {}, 2, (32, 64, 128)),
    ("dpmpp_3m", {}, 3, (64, 128, 256)), ("unipc", {"max_order": 2}, 3, (32, 64, 128)),
    ("unipc", {"max_order": 3}, 4, (32, 64, 128))])
def test_convergence_order_on_smooth_mixture(solver, kwargs, order, Ns):
    """UniPC's corrector raises the predictor's order k to k + 1 (Zhao et al. 2023, Theorem 3.3)."""
    gm, z, exact = smooth_bench()
    errors = [(edmlab.sample(gm, z, solver=solver, num_steps=N, final_step="none", **kwargs) - exact)
              .pow(2).mean().sqrt().item() for N in Ns]
    slope = -np.polyfit(np.log(Ns), np.log(errors), 1)[0]
    assert slope == pytest.approx(order, abs=0.3), (solver, errors)


@functools.cache
def endpoint_bench():
    z = latents(10, seed=2)
    return z, MIX.ode_solution(z * 80.0, 80.0)


@pytest.mark.parametrize("solver", [*MULTISTEP, "heun", "adaptive"])
def test_many_steps_reach_the_exact_ode_endpoint(solver):
    """Within 1e-3 of the exact σ = 0 endpoint, at least 10× closer than with few steps (Euler's 1st order is
    checked in test_sampler.py)."""
    z, exact = endpoint_bench()
    runs = ([dict(rtol=1e-3, atol=1e-3), dict(rtol=1e-6, atol=1e-6)] if solver == "adaptive"
            else [dict(num_steps=25), dict(num_steps=200)])
    few, many = ((edmlab.sample(MIX, z, solver=solver, **run) - exact).abs().max().item() for run in runs)
    assert many < 1e-3 and many < few / 10, (few, many)


@pytest.mark.parametrize("solver", FIXED)
@pytest.mark.parametrize("final_step", ["euler", "denoise", "none"])
@pytest.mark.parametrize("afs", [None, "zero", "gaussian"])
def test_counted_calls_equal_nfe(solver, final_step, afs):
    for N in (2, 3, 7):
        net = Net(sigma_data=0.5)
        edmlab.sample(net, latents(3), solver=solver, num_steps=N, final_step=final_step, afs=afs)
        assert net.calls == edmlab.nfe(solver, N, final_step=final_step, afs=afs), (N, net.sigmas)
    assert edmlab.nfe("heun", 18) == 35 and edmlab.nfe("euler", 18) == 18


@pytest.mark.parametrize("solver", FIXED)
def test_nfe_option_spends_exactly_that_many_calls(solver):
    for target in [*range(1, 13), 35]:
        try:
            edmlab.plan(solver=solver, nfe=target)
        except ValueError as error:
            assert f"nfe={target} calls" in str(error) and "nearest possible nfe=" in str(error)
            continue
        net = Net()
        edmlab.sample(net, latents(2), solver=solver, nfe=target)
        assert net.calls == target == edmlab.nfe(solver, nfe=target)
    assert [edmlab.plan(solver="heun", nfe=n).num_steps for n in (35, 10, 9)] == [18, 6, 5]
    assert edmlab.plan(solver="heun", nfe=10).final_step == "none"
    assert (edmlab.plan(solver="ipndm", nfe=10).num_steps, edmlab.plan(solver="ipndm", nfe=10).final_step) == (
        10, "euler")
    assert (edmlab.plan(solver="ipndm", nfe=4).num_steps, edmlab.plan(solver="ipndm", nfe=4).final_step) == (
        5, "none")


@pytest.mark.parametrize("solver", FIXED)
@pytest.mark.parametrize("afs,limit", [("zero", lambda x, sigma: torch.zeros_like(x)),
                                       ("gaussian", lambda x, sigma: 0.25 / (sigma**2 + 0.25) * x)])
def test_analytic_first_step_replaces_the_first_call(solver, afs, limit):
    """The run with afs equals the run whose denoiser answers its first call (at σ_max) with the limit."""
    first = []

    def stand_in(x, sigma):
        if not first:
            first.append(float(sigma[0]))
            return limit(x, sigma[0].item())
        return MIX(x, sigma)

    z = latents(6, seed=9)
    net = Net(sigma_data=0.5)
    ours = edmlab.sample(net, z, solver=solver, num_steps=6, afs=afs)
    torch.testing.assert_close(ours, edmlab.sample(stand_in, z, solver=solver, num_steps=6), rtol=0, atol=1e-12)
    assert first == [80.0] and net.calls == edmlab.nfe(solver, 6) - 1


@pytest.mark.parametrize("solver", [*FIXED, "adaptive"])
def test_same_seed_same_sample_at_any_batch_size(solver):
    def draw(seeds):
        streams = edmlab.SeedStreams(seeds)
        return edmlab.sample(MIX, streams.randn([3], torch.float64), solver=solver, num_steps=None if
                             solver == "adaptive" else 8, generator=streams)

    big = draw(range(16))
    assert torch.equal(draw(range(5)), big[:5])
    assert torch.equal(draw([9]), big[9:10])


@pytest.mark.parametrize("solver", [*FIXED, "adaptive"])
def test_class_labels_reach_the_denoiser(solver):
    """One-hot labels on component 1 of MIX sample exactly as the mixture of component 1 alone."""
    z = latents(8, seed=10)
    alone = edmlab.GaussianMixture(MIX.means[1:], MIX.stds[1:])
    labels = torch.tensor([[0.0, 1.0]] * 8, dtype=torch.float64)
    steps = {} if solver == "adaptive" else {"num_steps": 6}
    ours = edmlab.sample(MIX, z, solver=solver, class_labels=labels, **steps)
    torch.testing.assert_close(ours, edmlab.sample(alone, z, solver=solver, **steps), rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", FIXED)
def test_round_sigma_denoiser_is_called_on_its_own_levels(solver):
    """An iDDPM-like network supports only its grid u_j: every call lands on one of them."""
    u = edmlab.iddpm_grid()[:-1]
    net = Net(levels=u)
    edmlab.sample(net, latents(4), solver=solver, discretization="iddpm", num_steps=10)
    index = (torch.tensor(net.sigmas, dtype=torch.float64)[:, None] - u).abs().min(1).values
    assert net.calls == edmlab.nfe(solver, 10) and float(index.max()) < 1e-12


def test_adaptive_nfe_follows_the_tolerance_and_is_counted_per_sample():
    z = latents(4, seed=11)
    exact = MIX.ode_solution(z * 80.0, 80.0, 0.002)
    loose, tight = edmlab.CountingDenoiser(MIX), edmlab.CountingDenoiser(MIX)
    x_loose = edmlab.sample(loose, z, solver="adaptive", rtol=1e-2, atol=1e-2, final_step="none")
    x_tight = edmlab.sample(tight, z, solver="adaptive", rtol=1e-6, atol=1e-6, final_step="none")
    assert (x_tight - exact).abs().max() < 1e-4 < (x_loose - exact).abs().max()
    assert loose.evaluations < tight.evaluations
    singles = []
    for k in range(4):
        one = edmlab.CountingDenoiser(MIX)
        edmlab.sample(one, z[k:k + 1], solver="adaptive", rtol=1e-6, atol=1e-6, final_step="none")
        singles.append(one.evaluations)
    assert sum(singles) == tight.evaluations and tight.calls == max(singles)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(solver="rk4"), ValueError, r"unknown solver 'rk4': choose one of \['adaptive', 'consistency', 'deis'"),
    (dict(solver="ipndm", max_order=5), ValueError, r"solver='ipndm' has orders 1…4, got max_order=5"),
    (dict(solver="unipc", max_order=0), ValueError, r"solver='unipc' has orders 1…3, got max_order=0"),
    (dict(solver="deis", max_order=4), ValueError, r"solver='deis' has orders 1…3, got max_order=4"),
    (dict(solver="ipndm", nfe=3), ValueError,
     r"solver='ipndm' cannot spend exactly nfe=3 calls .*needs at least nfe=4 to take the 4 steps of order 4"),
    (dict(solver="dpmpp_3m", nfe=2, final_step="euler"), ValueError, r"needs at least nfe=4 to take the 3 steps"),
    (dict(solver="heun", nfe=10, final_step="euler"), ValueError,
     r"it makes 2 calls per step, plus one for final_step='euler'; nearest possible nfe=9"),
    (dict(solver="heun", nfe=0), ValueError, r"nfe must be an integer >= 1, got nfe=0"),
    (dict(num_steps=10, nfe=10), ValueError, r"give num_steps or nfe, not both \(got num_steps=10, nfe=10\)"),
    (dict(solver="adaptive", nfe=10), ValueError,
     r"solver='adaptive' picks its own steps .* from rtol/atol: drop nfe=10$"),
    (dict(solver="adaptive", num_steps=10), ValueError, r"drop num_steps=10"),
    (dict(solver="adaptive", rtol=0.0), ValueError, r"adaptive needs rtol > 0, got rtol=0.0"),
    (dict(solver="adaptive", atol=-1e-3), ValueError, r"adaptive needs atol > 0, got atol=-0.001"),
    (dict(final_step="zero"), ValueError, r"unknown final_step 'zero': choose one of \['euler', 'denoise', 'none'\]"),
    (dict(afs="yes"), ValueError, r"unknown afs 'yes'"),
    (dict(afs="gaussian"), ValueError, r"afs='gaussian' needs the denoiser's sigma_data, and GaussianMixture has"),
    (dict(solver="dpmpp_2m", schedule="vp"), ValueError, r"solver='dpmpp_2m' integrates EDM's ODE in σ"),
    (dict(solver="unipc", scaling="vp"), ValueError, r"use schedule=linear scaling=none"),
    (dict(num_steps=1, final_step="none"), ValueError, r"num_steps=1 is too few for final_step='none'")])
def test_bad_input_is_a_one_line_error_naming_the_value(kwargs, error, match):
    """Raised by sample, and by plan alone (a dry run before a long job) unless it needs the denoiser."""
    with pytest.raises(error, match=match) as info:
        edmlab.sample(MIX, latents(2), **kwargs)
    assert "\n" not in str(info.value)
    if kwargs.get("afs") != "gaussian":
        with pytest.raises(error, match=match):
            edmlab.plan(**kwargs)
