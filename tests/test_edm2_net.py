"""EDM2's magnitude-preserving U-Net (Karras et al. 2024): unit magnitudes, forced weight normalisation, bf16,
NVlabs/edm2's parameter counts and state-dict layout, and training through src/train.py."""
import math

import numpy as np
import pytest
import torch
from conftest import compose, train_tiny_run
from omegaconf import OmegaConf

import edmlab
from edmlab.io.network_file import build_denoiser
from edmlab.design.preconditioning import EDM2Precond
from edmlab.nets.edm2 import EDM2UNet, MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

N = 1 << 20  # samples per magnitude test: the mean of y² has a standard error of std(y²)/1024


def assert_unit_magnitude(y: torch.Tensor, expected: float = 1.0):
    """E[y²] = expected within 5 standard errors of the sample mean of y² (a 1-in-10⁶ miss for a correct layer)."""
    y2 = y.double().flatten() ** 2
    tolerance = 5 * y2.std().item() / math.sqrt(y2.numel())
    assert abs(y2.mean().item() - expected) <= tolerance, (y2.mean().item(), expected, tolerance)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_mp_silu_has_unit_magnitude_for_unit_normal_input(gen):
    x = np.linspace(-40, 40, 2_000_001)
    silu_rms = math.sqrt(np.trapezoid((x / (1 + np.exp(-x))) ** 2 * np.exp(-x**2 / 2) / math.sqrt(2 * math.pi), x))
    assert silu_rms == pytest.approx(0.596, abs=5e-4)  # EDM2 Eq. 81's constant: E[silu(x)²]^½ = 0.59647
    assert_unit_magnitude(mp_silu(torch.randn(N, generator=gen)), expected=(silu_rms / 0.596) ** 2)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 0.8])
def test_mp_sum_of_independent_unit_inputs_has_unit_magnitude(gen, t):
    a, b = torch.randn(2, N, generator=gen)
    assert_unit_magnitude(mp_sum(a, b, t))
    assert torch.equal(mp_sum(a, b, 0.0), a)


@pytest.mark.parametrize("t", [0.3, 0.5])
def test_mp_cat_has_unit_magnitude_and_splits_it_by_the_balance(gen, t):
    a, b = torch.randn(N // 32, 24, generator=gen), torch.randn(N // 32, 8, generator=gen)
    y = mp_cat(a, b, dim=1, t=t)
    assert y.shape == (N // 32, 32)
    assert_unit_magnitude(y)
    share_a = y[:, :24].square().sum() / y.square().sum()
    assert share_a.item() == pytest.approx((1 - t) ** 2 / ((1 - t) ** 2 + t**2), abs=2e-3)


def test_mp_fourier_features_have_unit_magnitude(gen):
    """y = √2·cos(ω·x + φ) with x ~ N(0, 1) has E[y²] = 1 + e^{−2ω²}·cos 2φ (E cos(a·x + b) = e^{−a²/2}·cos b):
    1 on average over the random phases φ ~ U[0, 2π), and exactly that for the fixed ω, φ of a layer."""
    torch.manual_seed(0)
    layer = MPFourier(256)
    features = layer(torch.randn(N // 256, generator=gen))
    assert features.shape == (N // 256, 256)
    omega, phi = layer.freqs.double(), layer.phases.double()
    assert_unit_magnitude(features, expected=1 + (torch.exp(-2 * omega**2) * torch.cos(2 * phi)).mean().item())
    assert abs((torch.exp(-2 * omega**2) * torch.cos(2 * phi)).mean().item()) < 0.01


@pytest.mark.parametrize("kernel", [[], [3, 3]])
@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_mp_conv_keeps_unit_magnitude_for_any_weights(gen, kernel, gain):
    torch.manual_seed(1)
    layer = MPConv(16, 8, kernel)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(8, *[1] * (layer.weight.ndim - 1)) * 10)  # per-channel scales do not matter
    x = torch.randn(N // 16, 16, generator=gen) if not kernel else torch.randn(64, 16, 34, 34, generator=gen)
    y = layer(x, gain=gain)
    y = y if not kernel else y[:, :, 1:-1, 1:-1]  # interior pixels: the border sees zero padding
    for channel in y.transpose(0, 1):
        assert_unit_magnitude(channel, expected=gain**2)


@pytest.mark.parametrize("dim", [None, 1])
def test_normalize_gives_unit_rms_along_the_chosen_dims(gen, dim):
    x = torch.randn(4, 6, 5, 5, generator=gen) * torch.tensor([0.1, 1, 10, 100]).reshape(4, 1, 1, 1)
    dims = (1, 2, 3) if dim is None else (1,)
    r = x.square().mean(dim=dims).sqrt()
    eps = 1e-4  # x/(ε + rms(x)) has rms r/(ε + r)
    torch.testing.assert_close(normalize(x, dim=dim).square().mean(dim=dims).sqrt(), r / (eps + r), rtol=1e-6, atol=0)


def tiny_edm2(label_dim=0, **kw):
    torch.manual_seed(0)
    kw = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, channels_per_head=8, **kw)
    return EDM2Precond(EDM2UNet(img_resolution=8, in_channels=1, out_channels=1, label_dim=label_dim, **kw))


def channel_norms(net):
    """‖w_i‖/√fan_in of every output channel of every MPConv's stored weight."""
    return torch.cat([m.weight.detach().flatten(1).norm(dim=1) / math.sqrt(m.weight[0].numel())
                      for m in net.modules() if isinstance(m, MPConv)])


def test_forced_weight_normalisation_keeps_each_channel_norm_fixed_through_adam_steps(gen):
    D = tiny_edm2(label_dim=10).train()
    assert (channel_norms(D) - 1).abs().max() > 0.2  # N(0, 1) init: the norms start off unit
    optimizer = torch.optim.Adam(D.parameters(), lr=0.05, betas=(0.9, 0.99))
    x, labels = torch.randn(16, 1, 8, 8, generator=gen), torch.eye(10)[torch.arange(16) % 10]
    drift = []
    for _ in range(5):
        r = channel_norms(D)
        denoised, logvar = D(x, torch.full((16,), 0.5), labels, return_logvar=True)
        loss = ((denoised - x).square() / logvar.exp() + logvar).mean()  # EDM2 Eq. 21 at λ = 1: u's layer trains too
        # the forward has rescaled each stored w_i to ‖w_i‖ = √fan_in·r/(ε + r), r its old rms (ε = 1e-4)
        torch.testing.assert_close(channel_norms(D), r / (1e-4 + r), rtol=1e-5, atol=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        drift.append((channel_norms(D) - 1).abs().max().item())
    assert max(drift) > 1e-2  # each Adam step moves the norms (by up to 1.7% here); the next forward undoes it
    D.eval()
    before = channel_norms(D)
    D(x, torch.full((16,), 0.5), labels)
    assert torch.equal(channel_norms(D), before)  # inference leaves the stored weights alone


def test_output_gain_starts_at_zero_so_the_initial_denoiser_is_c_skip_times_x(gen):
    D = tiny_edm2()
    x, sigma = torch.randn(4, 1, 8, 8, generator=gen), torch.tensor([0.01, 0.5, 2.0, 80.0])
    c_skip = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(D(x, sigma), c_skip.reshape(-1, 1, 1, 1) * x, rtol=0, atol=0)


def test_bf16_autocast_forward_and_backward(gen):
    D = tiny_edm2(label_dim=10)
    with torch.no_grad():
        D.unet.out_gain.fill_(1.0)
        for block in D.modules():
            if hasattr(block, "emb_gain"):
                block.emb_gain.fill_(0.5)
    x, sigma, labels = torch.randn(8, 1, 8, 8, generator=gen), torch.logspace(-2, 1.5, 8), torch.eye(10)[:8]
    reference = D.eval()(x, sigma, labels)
    F_dtypes = []
    D.unet.register_forward_hook(lambda module, args, out: F_dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, logvar = D.train()(x, sigma, labels, return_logvar=True)
    assert F_dtypes == [torch.bfloat16] and out.dtype == torch.float32 and logvar.shape == (8, 1, 1, 1)
    # bf16 keeps 8 bits of mantissa: a relative error of a few 2⁻⁸ after a dozen layers
    assert ((out - reference).norm() / reference.norm()).item() < 3e-2
    out.square().mean().backward()
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)


# NVlabs/edm2's training.networks_edm2.Precond(img_resolution=64, img_channels=3, label_dim=1000, model_channels=c,
# dropout=d), counted by running its networks_edm2.py beside ours (benchmarks/edm2_param_counts.py --nvlabs <edm2>):
# the paper's 280M / 498M / 777M / 1119M. Preset: (params, channels, α_ref, dropout, duration in Mi images).
NVLABS_IMG64 = {"s": (280_209_381, 192, 0.0100, 0.00, 1024), "m": (497_803_173, 256, 0.0090, 0.10, 2048),
                "l": (777_492_325, 320, 0.0080, 0.10, 1024), "xl": (1_119_276_837, 384, 0.0070, 0.10, 640)}


@pytest.mark.parametrize("size", sorted(NVLABS_IMG64))
def test_img64_presets_match_nvlabs_parameter_counts_and_recipe(size, tmp_path):
    params, channels, lr, dropout, mimg = NVLABS_IMG64[size]
    cfg = compose("train", [f"experiment=edm2_img64_{size}"], tmp_path)
    spec = {"network": OmegaConf.to_container(cfg.network, resolve=True),
            "network_kwargs": dict(img_resolution=64, in_channels=3, out_channels=3, label_dim=1000, augment_dim=0),
            "preconditioning": OmegaConf.to_container(cfg.preconditioning, resolve=True)}
    with torch.device("meta"):
        D = build_denoiser(spec)
    assert type(D) is EDM2Precond and sum(p.numel() for p in D.parameters()) == params
    assert (cfg.network.model_channels, cfg.optim.lr, cfg.network.dropout) == (channels, lr, dropout)
    assert cfg.duration_kimg == pytest.approx(mimg * 2**20 / 1000) and cfg.batch_size == 2048
    assert list(cfg.optim.betas) == [0.9, 0.99] and (cfg.noise_distribution.P_mean, cfg.noise_distribution.P_std) == (
        -0.8, 1.6)
    assert cfg.data.cond and cfg.augment is None and cfg.trainer.precision == "bf16-mixed"
    assert cfg.loss_weighting._target_.endswith("LearnedWeighting") and cfg.optim.lr_rampup_kimg == 10000
    assert (cfg.lr_schedule._target_, cfg.lr_schedule.ref_kimg, cfg.lr_schedule.lr) == (
        "edmlab.design.lr_schedules.EDM2Schedule", 35000 * 2048 / 1000, lr)
    assert cfg.ema._target_ == "edmlab.training.ema.PowerEMA" and list(cfg.ema.stds) == [0.05, 0.10] \
        and cfg.ema.snapshot_kimg == 8 * 2**20 / 1000


def test_state_dict_names_and_order_are_nvlabs():
    """NVlabs' Precond(img_resolution=8, img_channels=1, label_dim=10, model_channels=16, channel_mult=[1, 2],
    num_blocks=1, channels_per_head=8) has 63 entries, these first and last ones (listed by running it)."""
    keys = list(tiny_edm2(label_dim=10).state_dict())
    assert len(keys) == 63
    assert keys[:8] == ["unet.out_gain", "unet.emb_fourier.freqs", "unet.emb_fourier.phases", "unet.emb_noise.weight",
                        "unet.emb_label.weight", "unet.enc.8x8_conv.weight", "unet.enc.8x8_block0.emb_gain",
                        "unet.enc.8x8_block0.conv_res0.weight"]
    assert keys[-6:] == ["unet.dec.8x8_block1.attn_qkv.weight", "unet.dec.8x8_block1.attn_proj.weight",
                         "unet.out_conv.weight", "logvar_fourier.freqs", "logvar_fourier.phases",
                         "logvar_linear.weight"]
    assert [k for k in keys if "attn_qkv" in k] == [f"unet.{b}.attn_qkv.weight" for b in (
        "enc.8x8_block0", "dec.4x4_in0", "dec.8x8_block0", "dec.8x8_block1")]


def test_bad_arguments_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"augment_dim=9: train network=edm2 with augment=none"):
        EDM2UNet(img_resolution=8, in_channels=1, out_channels=1, augment_dim=9)
    with pytest.raises(ValueError, match=r"EDM2UNet: 30 channels do not split into 4 attention heads \(channels_per_h"):
        EDM2UNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=30, channel_mult=[1, 2],
                 channels_per_head=7)


def test_digits_sized_edm2_trains_through_train_py(tmp_path, one_cpu_thread):
    run = train_tiny_run(tmp_path, "experiment=edm2_digits", "loss_weighting=learned", "network.channels_per_head=16",
                         "trainer.max_steps=6")
    D = edmlab.load(run)
    assert type(D) is EDM2Precond and type(D.model) is EDM2UNet
    raw = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert raw["net.unet.out_gain"].abs() > 0  # trained away from its zero init
    assert not torch.equal(raw["net.logvar_linear.weight"], raw["ema.logvar_linear.weight"])  # u(σ) trained too
    weights = [w for k, w in raw.items() if k.startswith("net.unet.") and k.endswith(".weight")]
    norms = torch.cat([w.flatten(1).norm(dim=1) / math.sqrt(w[0].numel()) for w in weights])
    # the last forward rescaled each channel to unit rms, the last Adam step (lr 0.01·6/ramp) moved it a little
    assert (norms - 1).abs().max() < 5e-2
