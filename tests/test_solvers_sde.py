"""The stochastic samplers (euler_ancestral, dpmpp_2m_sde, dpmpp_3m_sde) against independent transcriptions of their
updates with given noise, their η = 0 limits, their NFE, per-sample noise streams, the stationary distribution of
Gaussian data, and their bad input. (k-diffusion itself: benchmarks/kdiffusion_side_by_side.py.)"""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import edmlab
from edmlab.sampling.solvers import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_euler_ancestral

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
from test_solvers_multistep import MIX, D, edm_levels, latents  # noqa: F401  (the shared bench and its helpers)

SDE = ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"]
NOISE_SEED = 7


def gaussian_denoiser(x, sigma):
    """D(x; σ) = x/(1 + σ²): the exact denoiser of data N(0, I)."""
    return x / (1 + sigma.view(-1, 1) ** 2)


def noise_source():
    """The draws the solvers make from ``torch.Generator().manual_seed(NOISE_SEED)``, one per noisy step."""
    g = torch.Generator().manual_seed(NOISE_SEED)
    return lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)


def sample(solver, z, num_steps, **kwargs):
    return edmlab.sample(MIX, z, solver=solver, num_steps=num_steps,
                         generator=torch.Generator().manual_seed(NOISE_SEED), **kwargs)


# --- transcriptions with given noise, stopping at σ_min --------------------------------------------------------

def euler_ancestral_paper(x, sig, eta, noise, noise_scale=1.0):
    """DDIM's step with η (Song, Meng & Ermon 2021, Eq. 12, 16) in σ: σ_up = min(σ', η√(σ'²(σ² − σ'²)/σ²)),
    σ_down = √(σ'² − σ_up²), x' = x + (σ_down − σ)·(x − D)/σ + σ_up·z."""
    for s, s_next in zip(sig[:-1], sig[1:]):
        d = (x - D(x, s)) / s
        up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        down = math.sqrt(s_next**2 - up**2)
        x = x + (down - s) * d
        if up > 0:
            x = x + noise_scale * up * noise(x)
    return x


def sde_paper(x, sig, eta, noise, rule, noise_scale=1.0):
    """The η-SDE dx = (1 + η)(D − x)dλ + σ√(2η)dW in λ = −log σ, one step solved exactly for D replaced by a
    polynomial P in λ through the past (λ_k, D_k): x' = e^{−H}x + Σ_k W_k·P^{(k)}(λ_i)/k!, W_k = ∫_0^h w(u)u^k du,
    w(u) = (1 + η)e^{−(1 + η)(h − u)}, H = (1 + η)h, noise of variance ∫_0^h e^{−2(1+η)(h−u)}·2ησ(u)² du, all by
    quadrature. ``rule``: "midpoint" (2M: W_0·P(λ_i + h/2), P linear), "linear" (W_0, W_1 with P linear),
    "kd3m" (k-diffusion's 3M: linear on the 2nd step, then P quadratic with half its W_2 term)."""
    lam, Ds = [], []
    for s, s_next in zip(sig[:-1], sig[1:]):
        lam.append(-math.log(s))
        Ds.append(D(x, s))
        h = math.log(s) - math.log(s_next)
        W = [quad(lambda u, k=k: (1 + eta) * math.exp(-(1 + eta) * (h - u)) * u**k, 0, h, epsabs=0, epsrel=1e-13)[0]
             for k in range(3)]
        degree = min(len(Ds) - 1, 2 if rule == "kd3m" else 1)
        if degree:
            fit = np.polyfit(np.array(lam[-degree - 1:]) - lam[-1],
                             torch.stack(Ds[-degree - 1:]).reshape(degree + 1, -1).numpy(), degree)
            derivs = [torch.from_numpy(fit[-1 - k] * math.factorial(k)).reshape(x.shape) for k in range(degree + 1)]
        if degree == 0:
            mean_D = W[0] * Ds[-1]
        elif rule == "midpoint":
            mean_D = W[0] * (Ds[-1] + h / 2 * derivs[1])
        elif degree == 1:
            mean_D = W[0] * Ds[-1] + W[1] * derivs[1]
        else:
            mean_D = W[0] * Ds[-1] + W[1] * derivs[1] + 0.5 * W[2] * derivs[2] / 2
        x = math.exp(-(1 + eta) * h) * x + mean_D
        if eta > 0:
            var = quad(lambda u: math.exp(-2 * (1 + eta) * (h - u)) * 2 * eta * (s * math.exp(-u)) ** 2, 0, h,
                       epsabs=0, epsrel=1e-13)[0]
            x = x + noise_scale * math.sqrt(var) * noise(x)
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 4.0])
def test_euler_ancestral_is_its_transcription(eta):
    z = latents(5)
    ours = sample("euler_ancestral", z, 10, eta=eta, final_step="none")
    paper = euler_ancestral_paper(z * 80.0, edm_levels(10), eta, noise_source())
    torch.testing.assert_close(ours, paper, rtol=1e-10, atol=1e-10)


# σ = 2 → σ' = 0.7: (η, σ_up, σ_down); at η = 1 σ_down = σ'²/σ, at η = 3 σ_up is clamped to σ' (σ_down = 0).
ONE_STEP = [(0.5, 0.5 * 0.7 * math.sqrt(1 - 0.49 / 4), math.sqrt(0.49 - 0.25 * 0.49 * (1 - 0.49 / 4))),
            (1.0, 0.7 * math.sqrt(1 - 0.49 / 4), 0.49 / 2), (3.0, 0.7, 0.0)]


@pytest.mark.parametrize("eta, up, down", ONE_STEP)
def test_one_ancestral_step_on_gaussian_data(eta, up, down):
    """D = x/(1 + σ²), given noise z: x' = x + (σ_down − σ)(x − D)/σ + σ_up·z, by hand."""
    x0 = latents(4, 2, seed=2) * 2.0
    out = sample_euler_ancestral(gaussian_denoiser, x0, [2.0, 0.7, 0.0], eta=eta, final_step="none",
                                 generator=torch.Generator().manual_seed(3))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(out, x0 + (down - 2.0) * (x0 - x0 / 5) / 2.0 + up * z, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("solver, options, rule", [("dpmpp_2m_sde", {}, "midpoint"),
                                                   ("dpmpp_2m_sde", {"solver_type": "heun"}, "linear"),
                                                   ("dpmpp_3m_sde", {}, "kd3m")])
def test_sde_solvers_are_their_transcriptions(solver, options, rule, eta):
    z = latents(5)
    ours = sample(solver, z, 9, eta=eta, final_step="none", noise_scale=0.8, **options)
    paper = sde_paper(z * 80.0, edm_levels(9), eta, noise_source(), rule, noise_scale=0.8)
    torch.testing.assert_close(ours, paper, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("final_step", ["euler", "denoise", "none"])
@pytest.mark.parametrize("afs", [None, "zero"])
def test_at_eta_zero_they_are_the_ode_solvers(final_step, afs):
    """Euler ancestral is euler; the 2M SDE (midpoint) is DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2). The
    3M SDE is not dpmpp_3m (``sde_paper``'s "kd3m" at η = 0, checked above); it differs from it."""
    z = latents(6)
    kw = dict(final_step=final_step, afs=afs)

    def ode(solver):
        return edmlab.sample(MIX, z, solver=solver, num_steps=12, **kw)

    torch.testing.assert_close(sample("euler_ancestral", z, 12, eta=0.0, **kw), ode("euler"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sample("dpmpp_2m_sde", z, 12, eta=0.0, **kw), ode("dpmpp_2m"), rtol=1e-12, atol=1e-12)
    gap = (sample("dpmpp_3m_sde", z, 12, eta=0.0, **kw) - ode("dpmpp_3m")).abs().max()
    assert gap > 1e-4, gap


@pytest.mark.parametrize("solver", SDE)
def test_eta_zero_draws_no_noise_and_eta_one_draws_every_step(solver):
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    edmlab.sample(MIX, latents(2), solver=solver, num_steps=8, eta=0.0, generator=g)
    assert torch.equal(g.get_state(), state)
    draws = []
    g = torch.Generator().manual_seed(0)
    edmlab.sample(MIX, latents(2), solver=solver, num_steps=8, eta=1.0, generator=g,
                  callback=lambda step: draws.append(step["i"]))
    reference = torch.Generator().manual_seed(0)
    for _ in range(7):  # one draw per step between the 8 levels, none in the final step
        torch.randn(2, 3, generator=reference, dtype=torch.float64)
    assert torch.equal(g.get_state(), reference.get_state()) and draws == list(range(8))


def test_first_step_at_eta_one_is_the_same_posterior_draw_in_all_three():
    """At η = 1 one first-order step of the SDE (SDE-DPM-Solver++1) is the DDPM posterior draw of Euler ancestral:
    x' = D + (σ'²/σ²)(x − D) + σ'√(1 − σ'²/σ²)·z."""
    x = latents(4) * 3.0
    outs = [f(MIX, x, [3.0, 1.1, 0.0], eta=1.0, final_step="none", generator=torch.Generator().manual_seed(5))
            for f in (sample_euler_ancestral, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde)]
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    d = D(x, 3.0)
    expected = d + (1.1**2 / 9) * (x - d) + 1.1 * math.sqrt(1 - 1.1**2 / 9) * z
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", SDE)
@pytest.mark.parametrize("final_step", ["euler", "denoise", "none"])
@pytest.mark.parametrize("afs", [None, "zero"])
def test_nfe_is_the_counted_calls(solver, final_step, afs):
    counted = edmlab.CountingDenoiser(MIX)
    edmlab.sample(counted, latents(3), solver=solver, num_steps=7, final_step=final_step, afs=afs,
                  generator=torch.Generator().manual_seed(0))
    expected = 6 + (final_step != "none") - (afs is not None)  # one call per step, as k-diffusion (N calls)
    assert counted.calls == expected == edmlab.nfe(solver, 7, final_step=final_step, afs=afs)
    counted = edmlab.CountingDenoiser(MIX)
    edmlab.sample(counted, latents(3), solver=solver, nfe=9, generator=torch.Generator().manual_seed(0))
    assert counted.calls == 9


@pytest.mark.parametrize("solver", SDE)
def test_same_seed_same_sample_at_any_batch_size(solver):
    def draw(seeds):
        streams = edmlab.SeedStreams(seeds)
        return edmlab.sample(MIX, streams.randn([3], torch.float64), solver=solver, num_steps=10, generator=streams)

    big = draw(range(24))
    assert torch.equal(draw(range(5)), big[:5])
    assert torch.equal(draw([0]), big[:1])
    assert torch.equal(draw(range(17, 22)), big[17:22])
    assert not torch.allclose(big[0], big[1])


@pytest.mark.parametrize("solver, eta", [("euler_ancestral", 1.0), ("euler_ancestral", 0.5), ("dpmpp_2m_sde", 1.0),
                                         ("dpmpp_2m_sde", 0.5), ("dpmpp_3m_sde", 1.0)])
def test_gaussian_data_is_stationary(solver, eta):
    """Data N(0, 1), exact D: samples at σ_min = 0.002 have mean 0 and variance 1 (+4e-6) within 4 standard errors,
    at many steps (Euler ancestral's bias is ≈ 10/N on this grid)."""
    n = 20000
    g = torch.Generator().manual_seed(11)
    z = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = edmlab.sample(gaussian_denoiser, z, solver=solver, num_steps=2048, eta=eta, final_step="none", generator=g)
    assert abs(x.mean().item()) < 4 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 4 * math.sqrt(2 / (n - 1)), x.var().item()


def test_the_stationarity_check_rejects_too_few_steps():
    """The same check fails where it should: Euler ancestral at 32 levels loses a quarter of the variance."""
    g = torch.Generator().manual_seed(11)
    z = torch.randn(20000, 1, generator=g, dtype=torch.float64)
    x = edmlab.sample(gaussian_denoiser, z, solver="euler_ancestral", num_steps=32, final_step="none", generator=g)
    assert abs(x.var().item() - 1) > 0.2


def test_bad_input_is_one_line_naming_it():
    with pytest.raises(ValueError, match=r"^eta must be a number >= 0 \(0: the ODE solver, 1: k-diffusion's "
                                         r"default\), got eta=-0.5$"):
        edmlab.plan(solver="euler_ancestral", eta=-0.5)
    with pytest.raises(ValueError, match=r"^eta=0.5 does not apply to solver='heun'; it is an option of "
                                         r"dpmpp_2m_sde, dpmpp_3m_sde, euler_ancestral$"):
        edmlab.plan(solver="heun", eta=0.5)
    with pytest.raises(ValueError, match=r"^solver_type=heun does not apply to solver='dpmpp_3m_sde'; it is an "
                                         r"option of dpmpp_2m_sde$"):
        edmlab.plan(solver="dpmpp_3m_sde", solver_type="heun")
    with pytest.raises(ValueError, match=r"^solver_type must be one of \['midpoint', 'heun'\] .*got "
                                         r"solver_type='rk4'$"):
        edmlab.plan(solver="dpmpp_2m_sde", solver_type="rk4")
    with pytest.raises(ValueError, match=r"^noise_scale must be a number >= 0 .*got noise_scale=-1$"):
        edmlab.plan(solver="dpmpp_2m_sde", noise_scale=-1)
    with pytest.raises(ValueError, match=r"^noise_scale=0.5 does not apply to solver='dpmpp_2m'"):
        edmlab.plan(solver="dpmpp_2m", noise_scale=0.5)
    with pytest.raises(ValueError, match=r"^eta must be a number >= 0 .*got eta=inf$"):
        sample_euler_ancestral(MIX, latents(1), [1.0, 0.5, 0.0], eta=math.inf)
    with pytest.raises(ValueError, match=r"solver='dpmpp_3m_sde' integrates EDM's ODE in σ"):
        edmlab.plan(solver="dpmpp_3m_sde", schedule="vp")


def test_eta_default_is_one_and_config_null_keeps_it():
    z = latents(3)
    torch.testing.assert_close(sample("dpmpp_2m_sde", z, 8), sample("dpmpp_2m_sde", z, 8, eta=1.0, noise_scale=1.0),
                               rtol=0, atol=0)
    torch.testing.assert_close(sample("dpmpp_2m_sde", z, 8, eta=None, solver_type=None), sample("dpmpp_2m_sde", z, 8),
                               rtol=0, atol=0)
