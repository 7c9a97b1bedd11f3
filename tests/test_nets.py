"""EDM's networks: parameter counts against NVlabs/edm, layer formulas, shapes, init facts, gradients, bad input."""
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from edmlab.nets import MLP, DhariwalUNet, SongUNet
from edmlab.nets.layers import Conv2d, FourierEmbedding, PositionalEmbedding, UNetBlock

CONF = Path(__file__).resolve().parents[1] / "conf" / "network"
DATA_KEYS = {"img_resolution", "in_channels", "out_channels", "label_dim", "augment_dim", "dim"}


def preset(name: str, **overrides):
    """The config's partial constructor, with architecture keywords overridden."""
    return instantiate(OmegaConf.load(CONF / f"{name}.yaml"), **overrides)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# Exact counts of NVlabs/edm's training/networks.py for the published configurations (EDM README / train.py);
# rounded, they are the 55.73M / 55.74M / 56.40M / 61.81M / 62.76M / 295.90M of the EDM runs. Reproduced from their
# code by benchmarks/nvlabs_reference_outputs.py --edm <NVlabs/edm checkout>.
PUBLISHED = [
    ("ddpmpp", dict(img_resolution=32, label_dim=0), {}, 55_733_891, 55.73),
    ("ddpmpp", dict(img_resolution=32, label_dim=10), {}, 55_735_299, 55.74),
    ("ncsnpp", dict(img_resolution=32, label_dim=0), {}, 56_397_827, 56.40),
    ("ncsnpp", dict(img_resolution=32, label_dim=10), {}, 56_400_643, 56.40),
    ("ddpmpp", dict(img_resolution=64, label_dim=0), dict(channel_mult=[1, 2, 2, 2]), 61_805_571, 61.81),
    ("ncsnpp", dict(img_resolution=64, label_dim=0), dict(channel_mult=[1, 2, 2, 2]), 62_761_091, 62.76),
]


@pytest.mark.parametrize("name,data,overrides,exact,millions", PUBLISHED)
def test_songunet_parameter_counts_match_nvlabs_edm(name, data, overrides, exact, millions):
    with torch.device("meta"):
        net = preset(name, **overrides)(in_channels=3, out_channels=3, augment_dim=9, **data)
    assert round(n_params(net) / 1e6, 2) == millions
    assert n_params(net) == exact


def test_adm_parameter_count_matches_nvlabs_edm():
    with torch.device("meta"):
        net = preset("adm")(img_resolution=64, in_channels=3, out_channels=3, label_dim=1000, augment_dim=0)
    assert round(n_params(net) / 1e6, 2) == 295.90
    assert n_params(net) == 295_899_267


@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp", "adm", "digits_small", "mlp"])
def test_network_configs_hold_only_architecture_keywords(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg._partial_ is True
    assert not DATA_KEYS & set(cfg.keys())
    data = dict(dim=2) if name == "mlp" else dict(img_resolution=32, in_channels=3, out_channels=3)
    with torch.device("meta"):
        net = instantiate(cfg)(label_dim=10, augment_dim=9, **data)
    for key, value in data.items():
        assert getattr(net, key) == value
    assert (net.label_dim, net.augment_dim) == (10, 9)


# NVlabs/edm's own outputs for small nets whose state-dict entries (sorted by name, the k-th of them) are set to
# 0.3·sin(0.37·i + k) over their flat index i: mean, std, out[0,0,0,:3] and out[1,2,-1,-3:]. Equal outputs mean
# equal computations and equal state-dict names and shapes, so NVlabs/edm checkpoints load into these classes.
# Produced, and reproducible, with NVlabs/edm's training/networks.py by
#   python benchmarks/nvlabs_reference_outputs.py --edm <NVlabs/edm checkout>
# which builds their nets for NVLABS_OUTPUTS and PUBLISHED (parameter counts) and prints both against these values.
SMALL_16 = dict(img_resolution=16, in_channels=3, out_channels=3, label_dim=10, augment_dim=9, model_channels=32,
                channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
NVLABS_OUTPUTS = {
    "ddpmpp": (SongUNet, {}, 0.4292492, 0.1752138, [-0.02288748, 0.04085758, 0.03123302], [0.5322102, 0.5196332, 0.4032742]),
    "ncsnpp": (SongUNet, dict(embedding_type="fourier", encoder_type="residual", channel_mult_noise=2,
                              resample_filter=[1, 3, 3, 1]),
               0.4246886, 0.178154, [-0.02709518, 0.03402156, 0.02639394], [0.5806, 0.5575293, 0.4320194]),
    "skip": (SongUNet, dict(encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1]),
             0.9923864, 0.6514179, [-0.2642986, -0.4260591, -0.4902303], [0.3302763, 0.3075034, 0.3041019]),
    "adm": (DhariwalUNet, dict(model_channels=64, attn_resolutions=[8, 4]),
            2.903638, 0.8940939, [-0.3465305, 0.02015394, 0.193099], [2.381218, 2.189533, 1.174602]),
}


def fixed_weights_output(net: torch.nn.Module) -> torch.Tensor:
    """The output of ``net`` (any module with SMALL_16's interface, ours or NVlabs') on the fixed weights and inputs
    described above."""
    net.eval()
    with torch.no_grad():
        for k, (key, t) in enumerate(sorted(net.state_dict(keep_vars=True).items())):
            if not key.endswith("resample_filter"):
                t.copy_((0.3 * torch.sin(0.37 * torch.arange(t.numel(), dtype=torch.float64) + k)).reshape(t.shape))
        x = torch.cos(0.05 * torch.arange(2 * 3 * 16 * 16, dtype=torch.float64)).reshape(2, 3, 16, 16).float()
        return net(x, torch.tensor([-0.7, 0.4]), torch.eye(10)[[3, 8]], torch.linspace(-1, 1, 18).reshape(2, 9))


@pytest.mark.parametrize("name", NVLABS_OUTPUTS)
def test_outputs_equal_nvlabs_edm_on_fixed_weights(name):
    cls, overrides, mean, std, head, tail = NVLABS_OUTPUTS[name]
    out = fixed_weights_output(cls(**{**SMALL_16, **overrides}))
    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.mean(), torch.tensor(mean), **close)
    torch.testing.assert_close(out.std(), torch.tensor(std), **close)
    torch.testing.assert_close(out[0, 0, 0, :3], torch.tensor(head), **close)
    torch.testing.assert_close(out[1, 2, -1, -3:], torch.tensor(tail), **close)


# --- layer formulas ------------------------------------------------------------------------------------

def test_positional_embedding_closed_form():
    x = torch.tensor([0.0, 0.5, -2.0, 3.0])
    # 8 channels, endpoint=True: ω_i = 1e-4^(i/3), i = 0..3, so ω = 1, 1e-4^(1/3), 1e-4^(2/3), 1e-4.
    omega = torch.tensor([1.0, 1e-4 ** (1 / 3), 1e-4 ** (2 / 3), 1e-4])
    phase = x[:, None] * omega
    want = torch.cat([phase.cos(), phase.sin()], dim=1)
    torch.testing.assert_close(PositionalEmbedding(8, endpoint=True)(x), want)
    torch.testing.assert_close(PositionalEmbedding(8, endpoint=True, sin_first=True)(x).roll(4, dims=1), want)
    # endpoint=False (ADM): ω_i = 1e-4^(i/4).
    omega = 1e-4 ** (torch.arange(4) / 4)
    torch.testing.assert_close(PositionalEmbedding(8)(x)[:, :4], (x[:, None] * omega).cos())


def test_fourier_embedding_closed_form():
    emb = FourierEmbedding(6)
    x = torch.tensor([0.1, -0.3])
    phase = 2 * math.pi * x[:, None] * emb.freqs
    torch.testing.assert_close(emb(x), torch.cat([phase.cos(), phase.sin()], dim=1))


def test_resampling_filters():
    x = torch.randn(2, 3, 8, 8)
    up = Conv2d(3, 3, kernel=0, up=True, resample_filter=[1, 1])
    torch.testing.assert_close(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    down = Conv2d(3, 3, kernel=0, down=True, resample_filter=[1, 1])
    torch.testing.assert_close(down(x), torch.nn.functional.avg_pool2d(x, 2))
    # The binomial [1,3,3,1] filter keeps constants in the interior (its taps sum to 1 after normalisation).
    binom = Conv2d(3, 3, kernel=0, down=True, resample_filter=[1, 3, 3, 1])(torch.ones(1, 3, 8, 8))
    assert binom.shape == (1, 3, 4, 4)
    torch.testing.assert_close(binom[..., 1:-1, 1:-1], torch.ones(1, 3, 2, 2))
    fused = Conv2d(3, 5, kernel=3, down=True, resample_filter=[1, 3, 3, 1], fused_resample=True)
    assert fused(x).shape == (2, 5, 4, 4)


def test_attention_matches_softmax_formula():
    torch.manual_seed(0)
    block = UNetBlock(8, 8, emb_channels=4, attention=True, num_heads=2)
    x = torch.randn(3, 8, 4, 4)
    qkv = block.qkv(x).reshape(3, 2, 4, 3, 16)  # [N, head, channel, (q,k,v), position]
    q, k, v = qkv.unbind(3)
    w = torch.softmax(torch.einsum("nhcq,nhck->nhqk", q, k) / math.sqrt(4), dim=-1)
    want = torch.einsum("nhqk,nhck->nhcq", w, v).reshape(3, 8, 4, 4)
    torch.testing.assert_close(block._attention(x), want)


# --- forward passes ------------------------------------------------------------------------------------

def digits_net(**kw):
    return preset("digits_small")(img_resolution=8, in_channels=1, out_channels=1, **kw)


SMALL_32 = dict(img_resolution=32, in_channels=3, out_channels=3, model_channels=16, channel_mult=[1, 2, 2],
                num_blocks=1, attn_resolutions=[8], dropout=0.0)
VARIANTS_32 = {
    "ddpmpp": dict(),
    "ncsnpp": dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual", resample_filter=[1, 3, 3, 1]),
    "skip": dict(encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1]),
}


def make(kind, **kw):
    if kind == "adm":
        return DhariwalUNet(**{**SMALL_32, "model_channels": 32, "attn_resolutions": [16, 8], **kw})
    return SongUNet(**{**SMALL_32, **VARIANTS_32[kind], **kw})


def inputs(n, res, channels, label_dim=0, augment_dim=0, dtype=torch.float32):
    x = torch.randn(n, channels, res, res, dtype=dtype)
    sigma = torch.rand(n) * 2 - 1
    y = torch.nn.functional.one_hot(torch.arange(n) % label_dim, label_dim).float() if label_dim else None
    a = torch.randn(n, augment_dim) if augment_dim else None
    return x, sigma, y, a


@pytest.mark.parametrize("label_dim,augment_dim", [(0, 0), (10, 0), (10, 9), (0, 9)])
def test_digits_small_shapes(label_dim, augment_dim):
    torch.manual_seed(0)
    net = digits_net(label_dim=label_dim, augment_dim=augment_dim)
    x, sigma, y, a = inputs(5, 8, 1, label_dim, augment_dim)
    out = net(x, sigma, y, a)
    assert out.shape == (5, 1, 8, 8) and out.dtype == torch.float32 and out.isfinite().all()
    assert net(x, sigma).shape == (5, 1, 8, 8)


@pytest.mark.parametrize("kind", ["ddpmpp", "ncsnpp", "skip", "adm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_unet_32_shapes_and_dtypes(kind, dtype):
    torch.manual_seed(0)
    net = make(kind, label_dim=10, augment_dim=9).eval()
    x, sigma, y, a = inputs(2, 32, 3, 10, 9, dtype=dtype)
    for labels, augment in [(y, a), (None, None), (y, None)]:
        out = net(x, sigma, labels, augment)
        assert out.shape == (2, 3, 32, 32) and out.dtype == dtype and out.isfinite().all()


def test_mlp_shapes_and_dtypes():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for embedding_type in ("positional", "fourier"):
            net = preset("mlp")(embedding_type=embedding_type, dim=2, label_dim=3, augment_dim=4)
            x = torch.randn(7, 2, dtype=dtype)
            out = net(x, torch.randn(7), torch.eye(3)[torch.arange(7) % 3], torch.randn(7, 4))
            assert out.shape == (7, 2) and out.dtype == dtype and out.isfinite().all()
            assert net(x, torch.randn(7)).shape == (7, 2)


# --- conditioning and init facts -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ddpmpp", "ncsnpp", "skip"])
def test_songunet_output_starts_near_zero(kind):
    torch.manual_seed(0)
    net = make(kind)
    conv = net.dec["32x32_aux_conv"]
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    xavier_std = math.sqrt(6 / (fan_in + fan_out)) / math.sqrt(3)
    assert conv.weight.std().item() == pytest.approx(1e-5 * xavier_std, rel=0.2)
    x, sigma, _, _ = inputs(2, 32, 3)
    out = net(x, sigma)
    assert 0 < out.abs().max().item() < 1e-3


def test_dhariwal_output_is_exactly_zero_at_init():
    torch.manual_seed(0)
    net = make("adm", label_dim=10, augment_dim=9)
    x, sigma, y, a = inputs(2, 32, 3, 10, 9)
    assert torch.equal(net(x, sigma, y, a), torch.zeros_like(x))


@pytest.mark.parametrize("factory", [lambda: make("ddpmpp", label_dim=10, augment_dim=9),
                                     lambda: digits_net(label_dim=10, augment_dim=9, dropout=0.0)])
def test_none_labels_mean_zero_vectors(factory):
    torch.manual_seed(0)
    net = factory().eval()
    res, ch = net.img_resolution, net.in_channels
    x, sigma, y, a = inputs(4, res, ch, 10, 9)
    base = net(x, sigma, y, None)
    assert torch.equal(base, net(x, sigma, y, torch.zeros_like(a)))
    assert not torch.allclose(base, net(x, sigma, y, a), rtol=0, atol=0)
    assert torch.equal(net(x, sigma, None, a), net(x, sigma, torch.zeros_like(y), a))
    assert not torch.allclose(net(x, sigma, None, a), net(x, sigma, y, a), rtol=0, atol=0)


def test_label_dropout_one_drops_every_label_in_training_only():
    torch.manual_seed(0)
    net = digits_net(label_dim=10, label_dropout=1.0, dropout=0.0)
    x, sigma, y, _ = inputs(4, 8, 1, 10)
    assert torch.equal(net.train()(x, sigma, y), net(x, sigma, None))
    assert not torch.equal(net.eval()(x, sigma, y), net(x, sigma, None))


def test_scalar_noise_label_broadcasts():
    torch.manual_seed(0)
    net = digits_net().eval()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(net(x, torch.tensor(0.3)), net(x, torch.full([3], 0.3)))


# --- gradients -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ddpmpp", "ncsnpp", "skip", "adm", "digits", "mlp"])
def test_gradients_reach_every_parameter(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        net = MLP(dim=2, label_dim=10, augment_dim=9, hidden=32, depth=2)
        x, sigma, y, a = torch.randn(4, 2), torch.randn(4), torch.eye(10)[:4], torch.randn(4, 9)
    elif kind == "digits":
        net = digits_net(label_dim=10, augment_dim=9)
        x, sigma, y, a = inputs(4, 8, 1, 10, 9)
    else:
        net = make(kind, label_dim=10, augment_dim=9)
        x, sigma, y, a = inputs(2, 32, 3, 10, 9)
    net(x, sigma, y, a).square().sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing
    if kind != "adm":  # ADM's zero-initialised output conv blocks all upstream gradients at init
        zero = [name for name, p in net.named_parameters() if not p.grad.abs().gt(0).any()]
        assert not zero


# --- bad arguments -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kw,match", [
    (SongUNet, dict(img_resolution=10, channel_mult=[1, 2, 2]), "divisible by 2\\*\\*\\(len\\(channel_mult\\)-1\\)=4"),
    (DhariwalUNet, dict(img_resolution=12, channel_mult=[1, 2, 2, 2]), "img_resolution=12"),
    (SongUNet, dict(embedding_type="sinusoidal"), "embedding_type"),
    (SongUNet, dict(encoder_type="progressive"), "encoder_type"),
    (SongUNet, dict(decoder_type="residual"), "decoder_type"),
    (SongUNet, dict(channel_mult=[]), "channel_mult"),
    (SongUNet, dict(channel_mult=[1, 0]), "channel_mult"),
    (SongUNet, dict(dropout=1.5), "dropout"),
    (DhariwalUNet, dict(num_blocks=-1), "num_blocks"),
    (SongUNet, dict(in_channels=0), "in_channels"),
])
def test_bad_unet_arguments_raise(cls, kw, match):
    base = dict(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1, 2])
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        cls(**{**base, **kw})


def test_bad_inputs_raise():
    net = digits_net(label_dim=10, augment_dim=9)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 1, 8, 8\]"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="noise_labels"):
        net(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"class_labels must have shape \[2, 10\]"):
        net(x, torch.zeros(2), torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"augment_labels must have shape \[2, 9\]"):
        net(x, torch.zeros(2), None, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 2\]"):
        MLP(dim=2)(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="embedding_type"):
        MLP(dim=2, embedding_type="learned")
