"""Learned uncertainty loss weighting (EDM2 Eq. 21): e^{u(σ)} converges to the expected weighted loss at each σ."""
import math

import pytest
import torch
from conftest import compose

from edmlab import DenoisingLoss, EDMWeighting, GaussianMixture
from edmlab.design.loss_weighting import LearnedWeighting
from edmlab.design.training_noise import EDMNoise

S, SIGMA_D = 0.3, 0.5
SIGMAS = [0.05, 0.2, 1.0, 5.0, 20.0]


class NoisyIdealDenoiser(torch.nn.Module):
    """The exact denoiser of N(0, S²I) plus a known offset ε(σ) = 0.1·σ on every coordinate; c_noise = ¼ ln σ."""

    def __init__(self):
        super().__init__()
        self.mixture = GaussianMixture(means=[[0.0, 0.0]], stds=S)

    def coefficients(self, sigma):
        return None, None, None, sigma.log() / 4

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        if getattr(self, "_cache", None) is None or not torch.equal(self._cache[0], x):
            sigma = sigma.reshape(-1, 1)
            self._cache = x, self.mixture.denoise(x.double(), sigma.double().flatten()).float() + 0.1 * sigma
        return self._cache[1]


def expected_weighted_loss(sigma):
    """Per coordinate: λ(σ)·(S²σ²/(S² + σ²) + ε²), the posterior variance of a Gaussian plus the offset squared."""
    lam = (sigma**2 + SIGMA_D**2) / (sigma * SIGMA_D) ** 2
    return lam * (S**2 * sigma**2 / (S**2 + sigma**2) + (0.1 * sigma) ** 2)


def test_exp_u_converges_to_the_expected_weighted_loss(one_cpu_thread):
    g = torch.Generator().manual_seed(0)
    n = 4000
    sigma = torch.tensor(SIGMAS).repeat_interleave(n)
    images = S * torch.randn(len(sigma), 2, generator=g)
    noise = torch.randn(len(sigma), 2, generator=g)
    weighting = LearnedWeighting(EDMWeighting(SIGMA_D))
    loss_fn = DenoisingLoss(EDMNoise(), weighting)
    denoiser = NoisyIdealDenoiser()
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.05)
    for step in range(300):
        optimizer.zero_grad()
        out = loss_fn(denoiser, images, sigma=sigma, noise=noise)
        out.loss.backward()
        optimizer.step()
    per_pixel = out.per_image.reshape(len(SIGMAS), n) / 2
    u = loss_fn.log_variance(denoiser, torch.tensor(SIGMAS)).detach()
    # The optimum of λ/e^u·L + u over u is e^u = L: the sample's weighted loss, to optimisation accuracy …
    torch.testing.assert_close(u.exp(), per_pixel.mean(1), rtol=2e-3, atol=0)
    # … which is the closed-form expectation up to the sample's error: within 4 standard errors.
    expected = torch.tensor([expected_weighted_loss(s) for s in SIGMAS])
    standard_error = per_pixel.std(1) / math.sqrt(n)
    assert ((per_pixel.mean(1) - expected).abs() < 4 * standard_error).all(), (per_pixel.mean(1), expected)
    assert expected.max() / expected.min() > 10  # the weighting really has to vary over σ


def test_learned_loss_is_the_formula():
    """loss = mean over images of Σ_pixels [λ/e^u·(D − y)² + u]; per_image stays Σ λ·(D − y)²."""
    weighting = LearnedWeighting(EDMWeighting(SIGMA_D), num_features=8)
    torch.nn.init.normal_(weighting.linear.weight)
    denoiser = NoisyIdealDenoiser()
    sigma, images, noise = torch.tensor([0.1, 2.0, 30.0]), torch.randn(3, 2), torch.randn(3, 2)
    out = DenoisingLoss(EDMNoise(), weighting)(denoiser, images, sigma=sigma, noise=noise)
    lam = (sigma**2 + SIGMA_D**2) / (sigma * SIGMA_D) ** 2
    err = ((denoiser(images + noise * sigma[:, None], sigma) - images) ** 2).sum(1)
    c = (sigma.log() / 4)[:, None]
    omega, phi = weighting.fourier.freqs, weighting.fourier.phases  # 2π·f_k and 2π·φ_k
    features = math.sqrt(2) * torch.cos(c * omega + phi)
    u = (features * weighting.linear.weight[0]).sum(1)
    torch.testing.assert_close(out.loss, (lam / u.exp() * err + 2 * u).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.per_image, lam * err, rtol=1e-6, atol=0)


def test_learned_weighting_reads_checkpoints_of_the_old_layout():
    """Before the features moved into ``fourier`` the state held f_k and φ_k (no 2π) as ``freqs``/``phases``:
    such a state loads strictly and gives u(c) = Σ_k w_k·√2·cos(2π(f_k·c + φ_k))."""
    f, phase, w = torch.randn(6), torch.rand(6), torch.randn(1, 6)
    weighting = LearnedWeighting(num_features=6)
    weighting.load_state_dict({"freqs": f, "phases": phase, "linear.weight": w})
    c = torch.tensor([-1.2, 0.0, 0.7])
    expected = (math.sqrt(2) * torch.cos(2 * math.pi * (c[:, None] * f + phase)) * w[0]).sum(1)
    torch.testing.assert_close(weighting.u(c), expected, rtol=1e-5, atol=1e-6)


def test_a_denoiser_without_c_noise_is_refused():
    loss_fn = DenoisingLoss(EDMNoise(), LearnedWeighting())
    mixture = GaussianMixture(means=[[0.0, 0.0]], stds=S)
    with pytest.raises(ValueError, match="loss_weighting=learned needs c_noise.*GaussianMixture has no coefficients"):
        loss_fn(mixture, torch.randn(4, 2), sigma=torch.ones(4))


def test_learned_weighting_trains_with_the_network(tmp_path, one_cpu_thread):
    """loss_weighting=learned with every preconditioning: u's parameters are in the optimizer, they move, and the
    checkpoint holds them."""
    from edmlab.training.run import build

    for precond in ("edm", "vp"):
        cfg = compose("train", ["loss_weighting=learned", f"preconditioning={precond}", "network.model_channels=8",
                                "network.channel_mult=[1]", "batch_size=32", "duration_kimg=0.096",
                                "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=csv",
                                "trainer.log_every_n_steps=1", "callbacks=none", "trainer.enable_model_summary=false"],
                      tmp_path / precond)
        trainer, module, datamodule = build(cfg)
        trainer.fit(module, datamodule=datamodule)
        (params,) = [g["params"] for g in trainer.optimizers[0].param_groups]
        assert any(p is module.loss_weighting.linear.weight for p in params)
        assert module.loss_weighting.linear.weight.abs().sum() > 0
        assert "loss_weighting.linear.weight" in module.state_dict()
        logged = (tmp_path / precond / "csv").rglob("metrics.csv")
        header = next(iter(logged)).read_text().splitlines()[0]
        assert "learned_u/" in header and "loss_per_sigma/" in header
        # EDM's nan_to_num of the gradients (NaN → 0, ±inf → ±1e5) covers u(σ)'s parameters too.
        for p in params:
            p.grad = torch.full_like(p, math.nan)
        module.loss_weighting.linear.weight.grad[..., 0] = math.inf
        module.on_before_optimizer_step(trainer.optimizers[0])
        assert module.loss_weighting.linear.weight.grad[..., 0].eq(1e5).all()
        assert all(p.grad[..., 1:].eq(0).all() if p is module.loss_weighting.linear.weight else p.grad.eq(0).all()
                   for p in params)


def test_edm2_preconditioning_trains_its_own_u_head():
    """With preconditioning=edm2 the u(σ) of the loss is the network's logvar head (saved with the network, as
    NVlabs/edm2), and the gradient reaches it."""
    from edmlab.design.preconditioning import EDM2Precond
    from edmlab.nets import EDM2UNet

    torch.manual_seed(0)
    net = EDM2Precond(EDM2UNet(8, 1, 1, model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[]))
    weighting = LearnedWeighting()
    loss_fn = DenoisingLoss(EDMNoise(), weighting)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    out = loss_fn(net, torch.randn(3, 1, 8, 8), sigma=sigma, noise=torch.randn(3, 1, 8, 8))
    out.loss.backward()
    torch.testing.assert_close(loss_fn.log_variance(net, sigma), net.logvar(sigma), rtol=0, atol=0)
    assert net.logvar_linear.weight.grad.abs().sum() > 0 and weighting.linear.weight.grad is None
