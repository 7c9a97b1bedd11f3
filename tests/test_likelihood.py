"""log_likelihood: the probability-flow ODE's log p of Gaussian-mixture data against the closed form (the mixture's
own p(·; σ_max) as the tail, so only the solver is measured), the Gaussian tail's error against its first-order
formula, Hutchinson's estimate unbiased with an s.e. ∝ 1/√K, bits/dim of known cases, and bad input."""
import math
import re

import pytest
import torch

from edmlab.data.mixture import GaussianMixture
from edmlab.data.points import PRESETS
from edmlab.infra.images import to_uint8
from edmlab.sampling.likelihood import (DP_A, DP_C, DP_E, bits_per_dim, dequantize, gaussian_log_prob,
                                        log_likelihood, ode_to_noise)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
# 3 anisotropic components off the axes (J of the denoiser has off-diagonal entries), mean norm 0.36
MIXTURE_3D = dict(means=[[1.0, 0.5, -0.3], [-0.8, 0.2, 0.9], [0.1, -1.0, 0.4]],
                  stds=[[0.3, 0.15, 0.2], [0.1, 0.25, 0.2], [0.2, 0.2, 0.4]], weights=[0.5, 0.3, 0.2])


def mixture(name: str) -> GaussianMixture:
    return GaussianMixture(**MIXTURE_3D) if name == "3d" else GaussianMixture(**PRESETS[name]())


def points(m: GaussianMixture, n: int, seed: int = 0) -> torch.Tensor:
    return m.sample(n, torch.Generator().manual_seed(seed))


def solver_only(m: GaussianMixture, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """log p(x; σ_min) by the ODE with the exact tail log p(x(σ_max); σ_max) of the mixture."""
    flow = ode_to_noise(m, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **kwargs)
    return m.log_prob(flow.latent, SIGMA_MAX) + flow.integral


def test_dormand_prince_tableau_is_consistent():
    for a, c in zip(DP_A, DP_C):
        assert sum(a) == pytest.approx(c, abs=1e-15)
    assert sum(DP_A[-1]) == pytest.approx(1, abs=1e-15) and sum(DP_E) == pytest.approx(0, abs=1e-15)
    # the 5th-order weights b integrate t^q exactly for q < 5: Σ b_i c_i^q = 1/(q + 1)
    b = DP_A[-1] + (0.0,)
    for q in range(5):
        assert sum(bi * ci**q for bi, ci in zip(b, DP_C)) == pytest.approx(1 / (q + 1), abs=1e-14)


@pytest.mark.parametrize("name,default_bound,tight_bound", [("ring8", 1e-3, 5e-6), ("3d", 1e-3, 5e-6)])
def test_exact_divergence_gives_the_closed_form(name, default_bound, tight_bound):
    """64 draws, max |log p_ODE − log p(x; σ_min)| measured: ring8 4.2e-4 at the default rtol = atol = 1e-5 and
    8.4e-7 at 1e-7; the 3-D mixture 1.5e-4 and 1.3e-6. The error falls with the tolerance."""
    m = mixture(name)
    x = points(m, 64)
    truth = m.log_prob(x, SIGMA_MIN)
    default = (solver_only(m, x) - truth).abs().max().item()
    tight = (solver_only(m, x, rtol=1e-7, atol=1e-7) - truth).abs().max().item()
    assert default < default_bound and tight < tight_bound and tight < default / 20


def test_gaussian_tail_error_is_the_dropped_data_mean():
    """N(0, σ_max² I) for the tail instead of the mixture's p(·; σ_max) ≈ N(μ̄, σ_max² I + Σ) moves log p by
    −(z·μ̄ − ‖μ̄‖²/2)/σ_max² to first order: measured up to 1.2e-2 nats on the 3-D mixture (‖μ̄‖ = 0.36), the
    remainder (the covariance) below 3.3e-4; 2.2e-4 on the centred ring8."""
    for name, smallest, largest in (("3d", 5e-3, 2e-2), ("ring8", 0, 5e-4)):
        m = mixture(name)
        x = points(m, 64)
        flow = ode_to_noise(m, x)
        error = gaussian_log_prob(flow.latent, SIGMA_MAX) - m.log_prob(flow.latent, SIGMA_MAX)
        mean = (m.weights[:, None] * m.means).sum(0)
        first_order = -(flow.latent @ mean - 0.5 * mean @ mean) / SIGMA_MAX**2
        assert smallest < error.abs().max() < largest and (error - first_order).abs().max() < 5e-4
        torch.testing.assert_close(log_likelihood(m, x), gaussian_log_prob(flow.latent, SIGMA_MAX) + flow.integral,
                                   rtol=0, atol=0)


def test_log_p_and_nfe_do_not_depend_on_the_batch():
    m = mixture("3d")
    x = points(m, 6)
    together = ode_to_noise(m, x)
    alone = [ode_to_noise(m, x[i : i + 1]) for i in range(len(x))]
    assert torch.equal(together.integral, torch.cat([a.integral for a in alone]))
    assert torch.equal(together.nfe, torch.cat([a.nfe for a in alone]))
    assert (together.nfe % 6 == 1).all()  # 1 first call + 6 per tried step (FSAL)


def test_hutchinson_with_rademacher_probes_is_exact_in_one_dimension():
    """vᵀJv = J for d = 1 and v = ±1."""
    m = mixture("bimodal1d")
    x = points(m, 8)
    exact = log_likelihood(m, x, rtol=1e-8, atol=1e-8)
    probed = log_likelihood(m, x, divergence="hutchinson", rtol=1e-8, atol=1e-8,
                            generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(probed, exact, rtol=0, atol=1e-6)


def hutchinson_replicates(m, x, replicates: int, probes: int, probe: str, seed: int) -> torch.Tensor:
    """[len(x), replicates] estimates of log p, each replicate with its own probes."""
    rows = x.repeat_interleave(replicates, 0)
    est = log_likelihood(m, rows, divergence="hutchinson", probes=probes, probe=probe,
                         generator=torch.Generator().manual_seed(seed))
    return est.view(len(x), replicates)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    """200 single-probe estimates of each of 3 points of the 3-D mixture: their mean is the exact-divergence value
    within 4 standard errors (one-probe s.d. measured 0.3-1.8 nats Rademacher, 11-14 nats Gaussian)."""
    m = mixture("3d")
    x = points(m, 3, seed=1)
    exact = log_likelihood(m, x)
    est = hutchinson_replicates(m, x, 200, 1, probe, seed=2)
    se = est.std(1) / math.sqrt(est.shape[1])
    assert (se > 0).all() and ((est.mean(1) - exact).abs() < 4 * se).all(), ((est.mean(1) - exact) / se)


def test_hutchinson_standard_error_shrinks_as_one_over_root_k():
    """The path does not depend on the probes, so K probes average K independent estimates: the s.d. over 200
    replicates falls by √16 = 4 from K = 1 to K = 16 (measured 3.9-4.1)."""
    m = mixture("3d")
    x = points(m, 2, seed=1)
    one = hutchinson_replicates(m, x, 200, 1, "rademacher", seed=3).std(1)
    sixteen = hutchinson_replicates(m, x, 200, 16, "rademacher", seed=4).std(1)
    ratio = one / sixteen
    assert ((ratio > 3.4) & (ratio < 4.6)).all(), ratio


class ImageMixture:
    """A 4-D mixture seen as 1×2×2 images: D of the flattened image, reshaped."""

    def __init__(self, m: GaussianMixture):
        self.m = m

    def __call__(self, x, sigma):
        return self.m(x.flatten(1), sigma).view_as(x)


def test_images_are_flattened_points():
    m = GaussianMixture(torch.tensor([[0.5, -0.5, 0.2, 0.0], [-0.4, 0.3, -0.1, 0.6]]), 0.3)
    x = points(m, 4)
    as_images = log_likelihood(ImageMixture(m), x.view(4, 1, 2, 2))
    torch.testing.assert_close(as_images, log_likelihood(m, x), rtol=0, atol=1e-12)
    probed = log_likelihood(ImageMixture(m), x.view(4, 1, 2, 2), divergence="hutchinson", probes=4,
                            generator=torch.Generator().manual_seed(0))
    assert probed.shape == (4,) and probed.dtype == torch.float64 and torch.isfinite(probed).all()


def test_bits_per_dim_of_known_densities():
    dims = 3 * 32 * 32
    # the uniform density over the 256 bins of width Δ = 2/255 around the levels of [−1, 1]: 8 bits per pixel
    uniform = torch.tensor([-dims * math.log(256 * 2 / 255)], dtype=torch.float64)
    assert bits_per_dim(uniform, dims).item() == pytest.approx(8.0, abs=1e-12)
    # 17 levels (the digits, k/8 − 1): Δ = 1/8, log2 17 bits for the uniform; the offset is log2(16/2) = 3
    uniform_digits = torch.tensor([-64 * math.log(17 / 8)], dtype=torch.float64)
    assert bits_per_dim(uniform_digits, 64, levels=17).item() == pytest.approx(math.log2(17), abs=1e-12)
    assert (bits_per_dim(torch.zeros(1), 64, levels=17) - bits_per_dim(torch.zeros(1), 64, "none")).item() == 3.0
    # continuous: N(0, I) at its mode, −log p/(d ln 2) = log2(2π)/2
    normal = gaussian_log_prob(torch.zeros(1, 2), 1.0)
    assert bits_per_dim(normal, 2, "none").item() == pytest.approx(0.5 * math.log2(2 * math.pi), abs=1e-12)


def test_dequantization_spreads_each_level_over_the_bin_that_to_uint8_reads_back():
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 256, (64, 3, 4, 4), generator=g)
    images = u / 127.5 - 1
    noisy = dequantize(images, generator=g)
    assert noisy.dtype == torch.float64 and (noisy - images.double()).abs().max() <= 1 / 255
    assert torch.equal(to_uint8(noisy), u.to(torch.uint8))
    # the noise is uniform over the bin: mean 0, variance Δ²/12
    offsets = ((noisy - images.double()) * 127.5).flatten()
    assert abs(offsets.mean()) < 0.01 and offsets.var().item() == pytest.approx(1 / 12, rel=0.03)


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kwargs,message", [
    (dict(probes=0), "probes must be an integer >= 1, got probes=0"),
    (dict(probes=2.0), "probes must be an integer >= 1, got probes=2.0"),
    (dict(divergence="trace"), "unknown divergence='trace': choose one of 'exact', 'hutchinson'"),
    (dict(divergence="hutchinson", probe="sphere"), "unknown probe='sphere': choose one of 'rademacher', 'gaussian'"),
    (dict(sigma_min=80.0, sigma_max=80.0), "need sigma_min < sigma_max, got sigma_min=80.0, sigma_max=80.0"),
    (dict(sigma_min=1.0, sigma_max=0.5), "need sigma_min < sigma_max, got sigma_min=1.0, sigma_max=0.5"),
    (dict(sigma_min=0.0), "sigma_min must be a finite number > 0, got sigma_min=0.0"),
    (dict(rtol=-1e-5), "rtol must be a finite number > 0, got rtol=-1e-05"),
])
def test_bad_options_are_refused_in_one_line_naming_the_value(kwargs, message):
    m = mixture("ring8")
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        log_likelihood(m, points(m, 2), **kwargs)
    one_line(error)


def test_a_denoiser_range_a_batch_and_a_gradient_are_checked():
    m = mixture("ring8")
    m.sigma_min = 0.01
    with pytest.raises(ValueError, match=r"sigma_min=0.002 is below the denoiser's smallest noise level 0.01 \(its "
                                         r"sigma_min\): use sigma_min >= 0.01") as error:
        log_likelihood(m, points(m, 2))
    one_line(error)
    with pytest.raises(ValueError, match=r"x must be a float tensor \[N, \.\.\.\] of N >= 1 points or images, "
                                         r"got \(2,\)"):
        log_likelihood(mixture("ring8"), torch.zeros(2))

    def detached(x, sigma):
        with torch.no_grad():
            return mixture("ring8")(x, sigma)

    with pytest.raises(ValueError, match="the denoiser's output carries no gradient with respect to x") as error:
        log_likelihood(detached, torch.zeros(2, 2, dtype=torch.float64))
    one_line(error)


def test_data_off_the_levels_of_minus_one_one_is_refused_for_dequantization():
    """dequantization='uniform' needs image data on the L levels of [−1, 1]: [0, 1] data, data beyond ±1
    (latents) and data between the levels (another level count) are refused, naming the range."""
    with pytest.raises(ValueError, match=re.escape("dequantization='uniform' needs image data on the 256 levels of "
                                                   "[-1, 1] (x = 2u/255 - 1), got values in [-3, 2.5]")) as error:
        dequantize(torch.tensor([[-3.0, 2.5]]))
    one_line(error)
    digits = torch.arange(17) / 8 - 1
    dequantize(digits[None], levels=17)
    with pytest.raises(ValueError, match=r"on the 256 levels .* got values in \[-1, 1\], up to 0\.5 level off "
                                         r"the grid: pass levels=<the data's level count>"):
        dequantize(digits[None])
    with pytest.raises(ValueError, match="levels must be an integer >= 2, got levels=1"):
        bits_per_dim(torch.zeros(1), 4, levels=1)
    with pytest.raises(ValueError, match="unknown dequantization='gaussian': choose one of 'uniform', 'none'"):
        bits_per_dim(torch.zeros(1), 4, "gaussian")
    with pytest.raises(ValueError, match="dims must be an integer >= 1, got dims=0"):
        bits_per_dim(torch.zeros(1), 0)
