"""Preconditionings and losses against EDM Table 1's formulas."""
import math

import pytest
import torch

import edmlab

SIGMAS = [0.002, 0.05, 0.5, 1.0, 7.3, 80.0]


class Echo(torch.nn.Module):
    """F(x_in, c_noise) = x_in + c_noise, so D exposes every coefficient."""
    label_dim = 0

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        return x + noise_labels.reshape(-1, *[1] * (x.ndim - 1))


def expected_coefficients(name, sigma):
    sd = 0.5
    if name == "edm":
        return sd**2 / (sigma**2 + sd**2), sigma * sd / math.sqrt(sigma**2 + sd**2), 1 / math.sqrt(sigma**2 + sd**2), math.log(sigma) / 4
    if name == "ve":
        return 1.0, sigma, 1.0, math.log(sigma / 2)
    if name == "vp":
        t = (math.sqrt(0.1**2 + 2 * 19.9 * math.log(1 + sigma**2)) - 0.1) / 19.9
        return 1.0, -sigma, 1 / math.sqrt(sigma**2 + 1), 999 * t
    raise KeyError(name)


PRECONDS = {"edm": edmlab.EDMPrecond, "ve": edmlab.VEPrecond, "vp": edmlab.VPPrecond}


@pytest.mark.parametrize("name", sorted(PRECONDS))
@pytest.mark.parametrize("sigma", SIGMAS)
def test_coefficients_match_table_1(name, sigma):
    precond = PRECONDS[name](Echo())
    got = precond.coefficients(torch.tensor([sigma], dtype=torch.float64))
    for g, e in zip(got, expected_coefficients(name, sigma)):
        assert float(g) == pytest.approx(e, rel=1e-9, abs=1e-12)
    x = torch.randn(3, 2, 4, 4)
    c_skip, c_out, c_in, c_noise = expected_coefficients(name, sigma)
    D = precond(x, torch.full((3,), sigma))
    torch.testing.assert_close(D, c_skip * x + c_out * (c_in * x + c_noise), rtol=1e-5, atol=1e-5)


def test_iddpm_coefficients_and_rounding():
    precond = edmlab.iDDPMPrecond(Echo())
    u = edmlab.iddpm_grid()
    for j in (0, 1, 500, 998, 999):
        sigma = torch.tensor([float(u[j]) * (1 + 1e-4)])
        c_skip, c_out, c_in, c_noise = precond.coefficients(sigma)
        assert float(c_noise) == 999 - j
        assert float(c_out) == pytest.approx(-float(sigma), rel=1e-6)
        assert float(c_in) == pytest.approx(1 / math.sqrt(float(sigma) ** 2 + 1), rel=1e-6)
        assert float(precond.round_sigma(sigma)) == pytest.approx(float(u[j]), rel=1e-6)
    assert precond.sigma_min == pytest.approx(0.006425, rel=1e-3) and precond.sigma_max == pytest.approx(20291, rel=1e-4)


def test_supported_ranges():
    vp = edmlab.VPPrecond(Echo())
    assert vp.sigma_min == pytest.approx(0.0010005, rel=1e-4) and vp.sigma_max == pytest.approx(152.17, abs=0.01)
    ve = edmlab.VEPrecond(Echo())
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)
    assert edmlab.EDMPrecond(Echo()).sigma_max == math.inf


@pytest.mark.parametrize("precond,weighting", [
    (edmlab.VPPrecond, edmlab.InverseVariance()), (edmlab.VEPrecond, edmlab.InverseVariance()),
    (edmlab.iDDPMPrecond, edmlab.InverseVariance()), (edmlab.EDMPrecond, edmlab.EDMWeighting(0.5))])
def test_weighting_times_c_out_squared_is_one(precond, weighting):
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    c_out = precond(Echo()).coefficients(sigma)[1]
    torch.testing.assert_close(weighting(sigma) * c_out**2, torch.ones_like(sigma))


def test_class_labels_default_to_zero_vector():
    seen = {}

    class Cond(Echo):
        label_dim = 3

        def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
            seen["labels"] = class_labels
            return x

    edmlab.EDMPrecond(Cond())(torch.zeros(2, 1, 2, 2), torch.ones(2))
    assert torch.equal(seen["labels"], torch.zeros(2, 3))


def test_training_noise_distributions():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    edm = edmlab.EDMNoise(-1.2, 1.2)
    s = edm.sample(n, g).double()
    for q, want in ((0.025, 0.029), (0.5, 0.301), (0.975, 3.16)):
        assert edm.quantile(q) == pytest.approx(want, abs=0.0005 if want < 1 else 0.005)
        assert float(s.quantile(q)) == pytest.approx(want, rel=0.03)
    ve = edmlab.VENoise(0.02, 100).sample(n, g).double().log()
    assert float(ve.min()) >= math.log(0.02) and float(ve.max()) <= math.log(100)
    assert float(ve.mean()) == pytest.approx((math.log(0.02) + math.log(100)) / 2, abs=0.02)
    assert float(ve.std()) == pytest.approx((math.log(100) - math.log(0.02)) / math.sqrt(12), rel=0.01)
    vp = edmlab.VPNoise()
    t = vp.schedule.sigma_inv(vp.sample(n, g).double())
    assert float(t.min()) >= 1e-5 - 1e-7 and float(t.max()) <= 1 + 1e-6
    assert float(t.mean()) == pytest.approx((1 + 1e-5) / 2, abs=0.005)
    with pytest.raises(ValueError, match="P_std"):
        edmlab.EDMNoise(P_std=0)


def test_loss_reduction_sum_over_pixels_mean_over_images():
    images = torch.randn(5, 2, 3, 3)
    loss_fn = edmlab.DenoisingLoss(edmlab.EDMNoise(), edmlab.EDMWeighting(0.5))

    def zero(x, sigma, class_labels=None, augment_labels=None):
        return torch.zeros_like(x)

    out = loss_fn(zero, images, generator=torch.Generator().manual_seed(1))
    lam = edmlab.EDMWeighting(0.5)(out.sigma)
    torch.testing.assert_close(out.per_image, lam * images.flatten(1).pow(2).sum(1))
    torch.testing.assert_close(out.loss, out.per_image.mean())


def test_loss_of_the_ideal_denoiser_is_its_posterior_variance():
    """On a 1-component "mixture", D is exact; E‖D − y‖² = D·σ²s²/(σ² + s²) in closed form."""
    s, dim, n = 0.7, 4, 20000
    gm = edmlab.GaussianMixture(torch.zeros(1, dim), s)
    images = gm.sample(n, torch.Generator().manual_seed(0)).float()
    sigma = 1.3

    class Fixed:
        def sample(self, n, generator=None, device="cpu"):
            return torch.full((n,), sigma)

    out = edmlab.DenoisingLoss(Fixed(), edmlab.InverseVariance())(
        lambda x, sg, **_: gm(x.double(), sg).float(), images, generator=torch.Generator().manual_seed(1))
    expected = dim * sigma**2 * s**2 / (sigma**2 + s**2) / sigma**2
    assert float(out.loss) == pytest.approx(expected, rel=0.02)


# --- iDDPM as NVlabs/edm builds it: 2·C output channels and the u grid in the state ----------------------

TOY_SONG = {"_target_": "edmlab.nets.SongUNet", "_partial_": True, "model_channels": 8, "channel_mult": [1, 2],
            "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
TOY_DATA = dict(img_resolution=8, in_channels=2, out_channels=2, label_dim=0, augment_dim=0)


def iddpm_denoiser():
    from edmlab.io.network_file import build_denoiser
    return build_denoiser({"network": TOY_SONG, "network_kwargs": TOY_DATA,
                           "preconditioning": {"_target_": "edmlab.iDDPMPrecond"}})


def float32_iddpm_grid(C_1=0.001, C_2=0.008, M=1000):
    """u_{j−1} = √((u_j² + 1)/max(ᾱ(j−1)/ᾱ(j), C_1) − 1), ᾱ(j) = sin²(½πj/(M(C_2+1))) (EDM Appendix C.3.4),
    every operation in float32, as NVlabs/edm's iDDPMPrecond computes it."""
    u = torch.zeros(M + 1)
    for j in range(M, 0, -1):
        ratio = torch.sin(torch.tensor(0.5 * math.pi * (j - 1) / M / (C_2 + 1))) ** 2 \
            / torch.sin(torch.tensor(0.5 * math.pi * j / M / (C_2 + 1))) ** 2
        u[j - 1] = ((u[j] ** 2 + 1) / ratio.clamp(min=C_1) - 1).sqrt()
    return u


def test_iddpm_network_has_twice_the_channels_and_D_reads_the_first_half():
    torch.manual_seed(0)
    D = iddpm_denoiser().eval()
    assert (D.model.in_channels, D.model.out_channels) == (2, 4)
    with torch.no_grad():
        D.model.dec["8x8_aux_conv"].weight.normal_()  # a non-trivial output: the zero-ish init would hide a mix-up
        x, sigma = torch.randn(3, 2, 8, 8), torch.tensor([0.05, 1.0, 30.0])
        u = D.u.double()
        j = (sigma.double()[:, None] - u[None]).abs().argmin(1)
        F = D.model(x / (sigma**2 + 1).sqrt().reshape(-1, 1, 1, 1), (999 - j).float())
        assert F.shape == (3, 4, 8, 8) and not torch.allclose(F[:, :2], F[:, 2:])
        torch.testing.assert_close(D(x, sigma), x - sigma.reshape(-1, 1, 1, 1) * F[:, :2], rtol=2e-5, atol=1e-5)


def test_iddpm_refuses_a_network_with_C_output_channels():
    net = edmlab.nets.SongUNet(**TOY_DATA, **{k: v for k, v in TOY_SONG.items() if not k.startswith("_")})
    with pytest.raises(ValueError, match=r"iDDPMPrecond needs a network with 2× output channels .* got in_channels=2, "
                                         r"out_channels=2; build it with out_channels=4"):
        edmlab.iDDPMPrecond(net)


def test_iddpm_grid_is_state_and_a_loaded_grid_wins():
    D = iddpm_denoiser()
    assert "u" in D.state_dict() and D.state_dict()["u"].shape == (1001,)
    nvlabs_u = float32_iddpm_grid()
    gap = ((nvlabs_u.double() - edmlab.iddpm_grid()).abs() / edmlab.iddpm_grid().clamp(min=1e-30)).max()
    assert 1e-4 < gap < 1e-3  # the float32 grid is measurably not the exact one
    D.load_state_dict({**D.state_dict(), "u": nvlabs_u}, strict=True)
    assert torch.equal(D.u, nvlabs_u)
    assert (D.sigma_min, D.sigma_max) == (float(nvlabs_u[999]), float(nvlabs_u[0]))
    probe = nvlabs_u[[3, 400, 998]] * (1 + 1e-5)
    assert torch.equal(D.round_sigma(probe), nvlabs_u[[3, 400, 998]])


def test_iddpm_network_file_round_trip_keeps_the_grid(tmp_path):
    D = iddpm_denoiser()
    D.load_state_dict({**D.state_dict(), "u": float32_iddpm_grid()})
    spec = {"network": TOY_SONG, "network_kwargs": TOY_DATA, "preconditioning": {"_target_": "edmlab.iDDPMPrecond"},
            "shape": [2, 8, 8]}
    loaded = edmlab.load(edmlab.save_network(tmp_path / "network.pt", D, spec))
    assert torch.equal(loaded.u, float32_iddpm_grid())
    for key, value in D.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
