"""Guidance (CFG / autoguidance): D_w = D_guide + w·(D − D_guide) inside the σ interval, for every solver."""
import pytest
import torch

import edmlab
from edmlab import GaussianMixture
from edmlab.guidance import GuidedDenoiser

NET = GaussianMixture(means=[[1.0, 0.0], [-1.0, 0.5]], stds=0.3)
GUIDE = GaussianMixture(means=[[0.8, 0.1], [-0.7, 0.4]], stds=0.6)  # a "bad version": blurrier, shifted modes
INTERVAL = (0.28, 5.42)  # EDM2-S's guidance interval (Kynkäänniemi et al. 2024)


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 3.0])
def test_guided_denoiser_is_the_formula_inside_the_interval(w):
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    guided = GuidedDenoiser(NET, GUIDE, w, INTERVAL)
    for sigma in (0.28, 1.0, 5.42):
        s = torch.full([5], sigma, dtype=torch.float64)
        expected = GUIDE(x, s) + w * (NET(x, s) - GUIDE(x, s))
        torch.testing.assert_close(guided(x, s), expected, rtol=1e-12, atol=1e-14)
    assert guided.calls == {"denoiser": 3, "guide": 3}
    for sigma in (0.002, 0.27, 5.5, 80.0):
        s = torch.full([5], sigma, dtype=torch.float64)
        assert torch.equal(guided(x, s), NET(x, s))
    assert guided.calls == {"denoiser": 7, "guide": 3}


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m"])
def test_w_1_is_the_unguided_sample(solver):
    latents = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    plain = edmlab.sample(NET, latents, solver=solver, num_steps=12)
    guided = edmlab.sample(NET, latents, solver=solver, num_steps=12, guide=GUIDE, guidance=1.0)
    assert torch.equal(plain, guided)
    stronger = edmlab.sample(NET, latents, solver=solver, num_steps=12, guide=GUIDE, guidance=2.0)
    assert (stronger - plain).abs().max() > 1e-2


def test_guidance_counts_both_networks_calls():
    """Heun's N-step walk calls D at σ_0…σ_{N−1} and again at σ_1…σ_{N−1}: the guide only where σ is inside."""
    sigmas = edmlab.sigma_steps(18).tolist()
    calls_at = sigmas[:18] + sigmas[1:18]
    guided = GuidedDenoiser(NET, GUIDE, 2.0, INTERVAL)
    edmlab.sample(guided, torch.randn(8, 2, dtype=torch.float64), solver="heun", num_steps=18)
    inside = sum(INTERVAL[0] <= s <= INTERVAL[1] for s in calls_at)
    assert guided.calls == {"denoiser": edmlab.nfe("heun", 18), "guide": inside}
    assert guided.calls["denoiser"] == 35 and 0 < inside < 35
    full = GuidedDenoiser(NET, GUIDE, 2.0)
    edmlab.sample(full, torch.randn(8, 2, dtype=torch.float64), solver="heun", num_steps=18)
    assert full.calls == {"denoiser": 35, "guide": 35}


class Labelled(torch.nn.Module):
    """A stub network that records the class labels it was called with."""

    def __init__(self, label_dim, shape=(1, 8, 8)):
        super().__init__()
        self.label_dim, self.model_spec, self.seen = label_dim, {"shape": list(shape)}, []

    def forward(self, x, sigma, class_labels=None):
        self.seen.append(class_labels)
        return torch.zeros_like(x) if class_labels is None else x * class_labels[:, :1, None, None]


def test_classifier_free_guide_is_called_without_labels():
    net, unconditional = Labelled(10), Labelled(0)
    labels = torch.eye(10)[[3, 0]]
    x = torch.randn(2, 1, 8, 8)
    out = GuidedDenoiser(net, unconditional, 3.0)(x, torch.ones(2), class_labels=labels)
    assert unconditional.seen == [None] and net.seen[0] is labels
    torch.testing.assert_close(out, 3.0 * x * labels[:, :1, None, None], rtol=0, atol=0)


def test_bad_guidance_is_refused():
    with pytest.raises(ValueError, match=r"guidance=-0.5 must be a number >= 0"):
        GuidedDenoiser(NET, GUIDE, -0.5)
    with pytest.raises(ValueError, match=r"guidance_interval=\(5.0, 1.0\) must satisfy 0 <= sigma_lo < sigma_hi"):
        GuidedDenoiser(NET, GUIDE, 2.0, (5.0, 1.0))
    with pytest.raises(ValueError, match=r"guidance=2.0, guidance_interval=None need a guide network"):
        edmlab.sample(NET, torch.randn(2, 2, dtype=torch.float64), guidance=2.0)
    with pytest.raises(ValueError, match=r"the guide network denoises shape \[3, 32, 32\] .* the network \[1, 8, 8\]"):
        GuidedDenoiser(Labelled(0), Labelled(0, (3, 32, 32)), 2.0)
    with pytest.raises(ValueError, match=r"the guide takes 5 class labels, the network 10"):
        GuidedDenoiser(Labelled(10), Labelled(5), 2.0)
