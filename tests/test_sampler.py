"""edmlab.sample against EDM's Algorithms 1 and 2 and against the exact ODE of a Gaussian mixture."""
import itertools
import math

import numpy as np
import pytest
import torch

import edmlab

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
MIX = edmlab.GaussianMixture([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.3]], [[0.5, 0.6, 0.4], [0.45, 0.5, 0.55]], [0.4, 0.6])


def latents(n, dim=3, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def algorithm_2(D, x_T, N=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, S_churn=0.0, S_min=0.0, S_max=math.inf,
                S_noise=1.0, noise=None):
    """EDM Algorithm 2 (Algorithm 1 when S_churn = 0), written out plainly."""
    t = [(sigma_max ** (1 / rho) + i / (N - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
         for i in range(N)] + [0.0]
    x = x_T * t[0]
    for i in range(N):
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_min <= t[i] <= S_max else 0.0
        t_hat = t[i] + gamma * t[i]
        eps = noise(x) if noise else torch.zeros_like(x)
        x_hat = x + math.sqrt(t_hat**2 - t[i] ** 2) * S_noise * eps
        d = (x_hat - D(x_hat, torch.full((len(x),), t_hat, dtype=torch.float64))) / t_hat
        x_next = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d2 = (x_next - D(x_next, torch.full((len(x),), t[i + 1], dtype=torch.float64))) / t[i + 1]
            x_next = x_hat + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def ablation_sampler(net, latents, randn_like, num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                     solver="heun", schedule="linear", scaling="none", epsilon_s=1e-3, alpha=1.0, S_churn=0.0,
                     S_min=0.0, S_max=math.inf, S_noise=1.0):
    """NVlabs/edm generate.py ``ablation_sampler`` (EDM discretization; the net has no round_sigma), written out."""
    vp_sigma = lambda beta_d, beta_min: lambda t: (np.e ** (0.5 * beta_d * (t**2) + beta_min * t) - 1) ** 0.5
    vp_sigma_deriv = lambda beta_d, beta_min: lambda t: 0.5 * (beta_min + beta_d * t) * (sigma(t) + 1 / sigma(t))
    vp_sigma_inv = lambda beta_d, beta_min: lambda sigma: ((beta_min**2 + 2 * beta_d * (sigma**2 + 1).log()).sqrt()
                                                           - beta_min) / beta_d
    vp_beta_d = 2 * (np.log(sigma_min**2 + 1) / epsilon_s - np.log(sigma_max**2 + 1)) / (epsilon_s - 1)
    vp_beta_min = np.log(sigma_max**2 + 1) - 0.5 * vp_beta_d
    step_indices = torch.arange(num_steps, dtype=torch.float64)
    sigma_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1) * (sigma_min ** (1 / rho)
                                                                             - sigma_max ** (1 / rho))) ** rho
    if schedule == "vp":
        sigma, sigma_deriv, sigma_inv = (f(vp_beta_d, vp_beta_min) for f in (vp_sigma, vp_sigma_deriv, vp_sigma_inv))
    else:
        sigma, sigma_deriv, sigma_inv = (lambda t: t), (lambda t: 1), (lambda sigma: sigma)
    if scaling == "vp":
        s = lambda t: 1 / (1 + sigma(t) ** 2).sqrt()
        s_deriv = lambda t: -sigma(t) * sigma_deriv(t) * (s(t) ** 3)
    else:
        s, s_deriv = (lambda t: 1), (lambda t: 0)
    t_steps = sigma_inv(sigma_steps)
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])
    t_next = t_steps[0]
    x_next = latents.to(torch.float64) * (sigma(t_next) * s(t_next))
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= sigma(t_cur) <= S_max else 0
        t_hat = sigma_inv(sigma(t_cur) + gamma * sigma(t_cur))
        x_hat = s(t_hat) / s(t_cur) * x_cur + (sigma(t_hat) ** 2 - sigma(t_cur) ** 2).clip(min=0).sqrt() * s(
            t_hat) * S_noise * randn_like(x_cur)
        h = t_next - t_hat
        denoised = net(x_hat / s(t_hat), sigma(t_hat).reshape(1).expand(len(x_cur))).to(torch.float64)
        d_cur = (sigma_deriv(t_hat) / sigma(t_hat) + s_deriv(t_hat) / s(t_hat)) * x_hat - sigma_deriv(t_hat) * s(
            t_hat) / sigma(t_hat) * denoised
        x_prime = x_hat + alpha * h * d_cur
        t_prime = t_hat + alpha * h
        if solver == "euler" or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            denoised = net(x_prime / s(t_prime), sigma(t_prime).reshape(1).expand(len(x_cur))).to(torch.float64)
            d_prime = (sigma_deriv(t_prime) / sigma(t_prime) + s_deriv(t_prime) / s(t_prime)) * x_prime - sigma_deriv(
                t_prime) * s(t_prime) / sigma(t_prime) * denoised
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
    return x_next


def _streams_noise(seeds):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return lambda x: torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in gens])


@pytest.mark.parametrize("alpha", [0.5, 0.75])
@pytest.mark.parametrize("schedule,scaling", [("linear", "none"), ("vp", "vp")])
def test_heun_alpha_equals_nvlabs_ablation_sampler(alpha, schedule, scaling):
    z = latents(20, seed=4)
    ours = edmlab.sample(MIX, z, alpha=alpha, schedule=schedule, scaling=scaling, num_steps=12, sigma_min=0.002,
                         sigma_max=80.0)
    theirs = ablation_sampler(MIX, z, torch.zeros_like, num_steps=12, alpha=alpha, schedule=schedule, scaling=scaling)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_churn_with_vp_schedule_and_scaling_equals_nvlabs_ablation_sampler(solver):
    z = latents(16, seed=5)
    seeds = list(range(300, 316))
    churn = dict(S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)
    ours = edmlab.sample(MIX, z, solver=solver, schedule="vp", scaling="vp", num_steps=10, sigma_min=0.002,
                         sigma_max=80.0, generator=edmlab.SeedStreams(seeds), **churn)
    theirs = ablation_sampler(MIX, z, _streams_noise(seeds), num_steps=10, solver=solver, schedule="vp",
                              scaling="vp", **churn)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert (ours - ablation_sampler(MIX, z, torch.zeros_like, num_steps=10, solver=solver, schedule="vp",
                                    scaling="vp")).abs().max() > 0.01


def test_heun_equals_algorithm_1():
    z = latents(50)
    ours = edmlab.sample(MIX, z, solver="heun", discretization="edm", schedule="linear", scaling="none")
    torch.testing.assert_close(ours, algorithm_2(MIX, z), rtol=0, atol=1e-12)


def test_churn_equals_algorithm_2_with_per_sample_streams():
    z = latents(20, seed=3)
    seeds = list(range(100, 120))
    churn = dict(S_churn=30.0, S_min=0.05, S_max=50.0, S_noise=1.007)
    ours = edmlab.sample(MIX, z, generator=edmlab.SeedStreams(seeds), **churn)
    gens = [torch.Generator().manual_seed(s) for s in seeds]

    def noise(x):
        return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in gens])

    torch.testing.assert_close(ours, algorithm_2(MIX, z, noise=noise, **churn), rtol=0, atol=1e-12)
    assert not torch.allclose(ours, algorithm_2(MIX, z))


@pytest.mark.parametrize("solver,N,expected", [("euler", 7, 7), ("heun", 7, 13), ("heun", 18, 35), ("heun", 1, 1)])
def test_nfe(solver, N, expected):
    calls = []

    def D(x, sigma):
        calls.append(float(sigma[0]))
        return MIX(x, sigma)

    edmlab.sample(D, latents(4), solver=solver, num_steps=N)
    assert len(calls) == expected == edmlab.nfe(solver, N)
    assert min(calls) > 0


def test_convergence_orders_on_smooth_mixture():
    gm = edmlab.GaussianMixture([[-1.0], [1.0]], [0.5, 0.5])
    z = latents(100, dim=1, seed=1)
    exact = gm.ode_solution(z * 80.0, 80.0)
    Ns = [32, 64, 128]
    for solver, order in (("euler", 1.0), ("heun", 2.0)):
        errors = [(edmlab.sample(gm, z, solver=solver, num_steps=N) - exact).pow(2).mean().sqrt().item() for N in Ns]
        slope = -np.polyfit(np.log(Ns), np.log(errors), 1)[0]
        assert slope == pytest.approx(order, abs=0.2), (solver, errors)


def test_every_warp_converges_to_the_same_endpoint():
    """σ(t), s(t) and the time grid are warps of one ODE: all 24 combinations reach the exact endpoint. The iDDPM
    grid is finite (its smallest level is u_999 ≈ 0.0064, so its last Euler step leaves a floor near 2e-3)."""
    z = latents(30, seed=2)
    exact = MIX.ode_solution(z * 80.0, 80.0)
    for schedule, scaling, disc in itertools.product(("vp", "ve", "linear"), ("vp", "none"),
                                                     ("vp", "ve", "iddpm", "edm")):
        Ns, bound = (32, 512), (2e-2 if disc == "iddpm" else 1.2e-3)
        errs = [(edmlab.sample(MIX, z, schedule=schedule, scaling=scaling, discretization=disc, num_steps=N,
                               sigma_min=0.002, sigma_max=80.0) - exact).abs().max().item() for N in Ns]
        assert errs[1] < bound and errs[1] < errs[0] / 2.5, (schedule, scaling, disc, errs)


def test_stochastic_sampler_reproduces_the_mixture():
    """Kolmogorov–Smirnov distance to the exact CDF below its 99.9% bound 1.95/√n (plus a small allowance for
    discretization)."""
    gm = edmlab.GaussianMixture([[-2.0], [0.5], [2.5]], [0.3, 0.6, 0.4], [0.3, 0.5, 0.2])
    n = 4000
    seeds = range(n)
    streams = edmlab.SeedStreams(seeds)
    x = edmlab.sample(gm, streams.randn([1], torch.float64), num_steps=64, S_churn=20, S_min=0.01, S_max=50,
                      generator=streams)[:, 0].sort().values
    cdf = sum(w * 0.5 * (1 + torch.erf((x - m) / (s * math.sqrt(2))))
              for w, m, s in zip(gm.weights, gm.means[:, 0], gm.stds[:, 0]))
    empirical_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = max((empirical_hi - cdf).abs().max().item(), (cdf - (empirical_hi - 1 / n)).abs().max().item())
    assert ks < 1.95 / math.sqrt(n) + 0.005, ks


@pytest.mark.parametrize("churn", [0.0, 10.0])
def test_same_seed_same_sample_at_any_batch_size(churn):
    def draw(seeds):
        streams = edmlab.SeedStreams(seeds)
        return edmlab.sample(MIX, streams.randn([3], torch.float64), num_steps=12, S_churn=churn, generator=streams)

    big = draw(range(64))
    assert torch.equal(draw(range(7)), big[:7])
    assert torch.equal(draw([0]), big[:1])
    assert torch.equal(draw(range(20, 27)), big[20:27])


def test_callback_sees_every_step():
    steps = []
    edmlab.sample(MIX, latents(2), num_steps=5, callback=steps.append)
    assert [s["i"] for s in steps] == list(range(5))
    assert steps[-1]["sigma_next"] == 0 and steps[0]["sigma"] == pytest.approx(80)
    assert steps[-1]["x"].shape == (2, 3) and steps[-1]["denoised"].shape == (2, 3)


def test_float32_latents_give_float32_samples():
    x = edmlab.sample(MIX, latents(3).float(), num_steps=4)
    assert x.dtype == torch.float32


@pytest.mark.parametrize("kwargs,match", [
    (dict(rho=0.0), "rho=0.0"), (dict(rho=-1.0), "rho=-1.0"),
    (dict(sigma_min=5.0, sigma_max=1.0), "sigma_min=5.0"), (dict(num_steps=0), "num_steps=0"),
    (dict(solver="rk4"), "'rk4'"), (dict(discretization="cosine"), "'cosine'"), (dict(schedule="x"), "'x'"),
    (dict(scaling="y"), "'y'"), (dict(alpha=1.5), "alpha=1.5"), (dict(S_churn=-1.0), "S_churn=-1.0")])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        edmlab.sample(MIX, latents(2), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(solver="euler", alpha=0.5), r"alpha=0.5 does not apply to solver='euler'; it is an option of heun"),
    (dict(solver="ipndm", S_churn=40.0),
     r"S_churn=40.0 does not apply to solver='ipndm'; it is an option of euler, heun"),
    (dict(solver="heun", max_order=2), r"max_order=2 does not apply to solver='heun'"),
    (dict(solver="heun", rtol=1e-3), r"rtol=0.001 does not apply to solver='heun'; it is an option of adaptive")])
def test_inapplicable_argument_is_an_error_naming_it(kwargs, match):
    with pytest.raises(ValueError, match=match):
        edmlab.sample(MIX, latents(2), **kwargs)


def test_solver_functions_take_no_unknown_arguments():
    flow = edmlab.make_flow()
    t = edmlab.time_steps(4)
    with pytest.raises(TypeError, match="S_churn"):
        edmlab.sample_heun(MIX, latents(2) * 80, t, flow, S_churn=40)
    with pytest.raises(TypeError, match="alpha"):
        edmlab.sample_euler(MIX, latents(2) * 80, t, flow, alpha=0.5)


def test_latents_of_wrong_dtype():
    with pytest.raises(TypeError, match="int64"):
        edmlab.sample(MIX, torch.zeros(2, 3, dtype=torch.int64))
