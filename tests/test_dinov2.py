"""FD-DINOv2 (EDM2): edmlab's DINOv2 ViT against a step-by-step transcription of the original's forward pass, the
ViT-L/14 layout of facebookresearch/dinov2's dinov2_vitl14, EDM2's preprocessing against a hand computation, the
metric end to end through src/eval.py, and bad weights / reference files. Random weights only, small networks."""
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import compose
from torch.nn import functional as F

import edmlab.evaluation.metrics.dinov2 as dinov2
from edmlab.evaluation.metrics.dinov2 import DINOv2ViT, check_state_dict, dinov2_features, dinov2_input, load_dinov2
from edmlab.evaluation.metrics.frechet import load_statistics
from edmlab.io.nvlabs import UnsafePickleError

TINY = dict(img_size=42, patch_size=14, embed_dim=8, depth=2, num_heads=2, mlp_ratio=4)  # 3×3 training grid


@pytest.fixture(autouse=True)
def fresh_cache():
    dinov2._NETWORKS.clear()
    yield
    dinov2._NETWORKS.clear()


def random_state(net: torch.nn.Module, seed: int) -> dict:
    """Every entry drawn: LayerScale γ and LayerNorm scales in [0.5, 1.5], matrices ~ N(0, 1/fan_in), the rest
    (biases, tokens, positions) ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if value.ndim == 1 and key.endswith(("gamma", "weight")):
            state[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif value.ndim >= 2 and key.endswith("weight"):
            state[key] = torch.randn(value.shape, generator=g) / value[0].numel() ** 0.5
        else:
            state[key] = torch.randn(value.shape, generator=g)
    return state


def tiny_weights(path: Path, seed: int = 0, **arch) -> Path:
    torch.save(random_state(DINOv2ViT(**(TINY | arch)), seed), path)
    return path


# ------------------------------------------------------------------------------------- (a) the forward pass


def cubic(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a (PyTorch: −0.75 for plain bicubic, −0.5 antialiased)."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                    np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def bicubic_scale_matrix(size_in: int, size_out: int, scale_factor: float) -> np.ndarray:
    """[out, in] weights of F.interpolate(mode='bicubic', align_corners=False, antialias=False, scale_factor=s):
    source x = (i + ½)/s − ½, taps ⌊x⌋−1 … ⌊x⌋+2 clamped to the border, weights cubic(·, −0.75)."""
    m = np.zeros((size_out, size_in))
    for i in range(size_out):
        x = (i + 0.5) / scale_factor - 0.5
        base = math.floor(x)
        for tap in range(base - 1, base + 3):
            m[i, min(max(tap, 0), size_in - 1)] += cubic(np.array(x - tap), -0.75)
    return m


def transcribed_forward(state: dict, x: np.ndarray, patch: int, heads: int) -> np.ndarray:
    """DinoVisionTransformer.forward(is_training=False) of facebookresearch/dinov2, written out in numpy float64
    from the state_dict: patch projection, CLS + interpolated positions (offset 0.1), pre-norm blocks with
    LayerScale, final LayerNorm, CLS token."""
    s = {k: v.double().numpy() for k, v in state.items()}
    n, c, height, width = x.shape
    gh, gw = height // patch, width // patch
    patches = x.reshape(n, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, -1)
    w = s["patch_embed.proj.weight"]
    tokens = patches @ w.reshape(len(w), -1).T + s["patch_embed.proj.bias"]
    dim = tokens.shape[-1]
    tokens = np.concatenate([np.broadcast_to(s["cls_token"], (n, 1, dim)), tokens], axis=1)
    pos = s["pos_embed"][0]
    side = math.isqrt(len(pos) - 1)
    if gh * gw == side * side and height == width:
        grid = pos[1:]
    else:
        rows = bicubic_scale_matrix(side, gh, (gh + 0.1) / side)
        cols = bicubic_scale_matrix(side, gw, (gw + 0.1) / side)
        grid = np.einsum("ia,jb,abd->ijd", rows, cols, pos[1:].reshape(side, side, dim), optimize=True)
        grid = grid.reshape(gh * gw, dim)
    tokens = tokens + np.concatenate([pos[:1], grid])[None]

    def layer_norm(t, name):
        mu, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + 1e-6) * s[f"{name}.weight"] + s[f"{name}.bias"]

    def linear(t, name):
        return t @ s[f"{name}.weight"].T + s[f"{name}.bias"]

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    block = 0
    while f"blocks.{block}.norm1.weight" in s:
        b = f"blocks.{block}"
        q, k, v = np.split(linear(layer_norm(tokens, f"{b}.norm1"), f"{b}.attn.qkv"), 3, axis=-1)
        hd = dim // heads
        out = np.zeros_like(tokens)
        for h in range(heads):
            part = slice(h * hd, (h + 1) * hd)
            logits = q[..., part] @ k[..., part].transpose(0, 2, 1) / math.sqrt(hd)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            out[..., part] = (p / p.sum(-1, keepdims=True)) @ v[..., part]
        tokens = tokens + s[f"{b}.ls1.gamma"] * linear(out, f"{b}.attn.proj")
        hidden = gelu(linear(layer_norm(tokens, f"{b}.norm2"), f"{b}.mlp.fc1"))
        tokens = tokens + s[f"{b}.ls2.gamma"] * linear(hidden, f"{b}.mlp.fc2")
        block += 1
    return layer_norm(tokens, "norm")[:, 0]


@pytest.mark.parametrize("size", [(42, 42), (56, 56), (42, 70)], ids=["training-grid", "square", "non-square"])
def test_forward_matches_a_transcription_of_the_original(size):
    net = DINOv2ViT(**TINY)
    state = random_state(net, seed=1)
    net.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = net.double()(x).detach().numpy()
    want = transcribed_forward(state, x.numpy(), TINY["patch_size"], TINY["num_heads"])
    assert got.shape == (2, TINY["embed_dim"])
    # the original interpolates the positions in float32 (pos_embed.float()) whatever the model's dtype: its
    # rounding (~1e-7) propagates; the offset-0 error it would catch is ~1e-2 (test_position_offset_matters)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 if size == (42, 42) else 1e-6)
    assert np.abs(want[0] - want[1]).max() > 0.1  # the two inputs give distinct features


def test_position_offset_matters():
    """The 0.1 offset of the interpolation scale changes the positions (the transcription would catch its loss)."""
    net = DINOv2ViT(**TINY)
    net.load_state_dict(random_state(net, seed=1))
    with torch.no_grad():
        pos = net.position_embedding(56, 56)
        exact = F.interpolate(net.pos_embed[:, 1:].reshape(1, 3, 3, -1).permute(0, 3, 1, 2), size=(4, 4),
                              mode="bicubic").permute(0, 2, 3, 1).reshape(1, 16, -1)
    assert pos.shape == (1, 17, 8) and torch.equal(pos[:, 0], net.pos_embed[:, 0])
    assert (pos[:, 1:] - exact).abs().max() > 1e-3


# ------------------------------------------------------------------------------------- (b) ViT-L/14 layout


def test_vit_l14_has_the_layout_of_dinov2_vitl14():
    """Facts of facebookresearch/dinov2 (commit b8931f7b, hub/backbones.py dinov2_vitl14 → vit_large): 304,368,640
    parameters, measured as sum(p.numel() for p in dinov2_vitl14(pretrained=False).parameters()) with their code
    (benchmarks/dinov2_side_by_side.py prints it); 343 state_dict entries; no registers, LayerScale, eps 1e-6."""
    with torch.device("meta"):
        net = dinov2.vit_l14()
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 304_368_640
    assert len(state) == 343
    shapes = {k: list(v.shape) for k, v in state.items()}
    assert shapes["pos_embed"] == [1, 1370, 1024] and shapes["cls_token"] == [1, 1, 1024]
    assert shapes["mask_token"] == [1, 1024] and shapes["patch_embed.proj.weight"] == [1024, 3, 14, 14]
    assert shapes["blocks.23.ls2.gamma"] == [1024] and shapes["blocks.0.attn.qkv.weight"] == [3072, 1024]
    assert shapes["blocks.11.mlp.fc1.weight"] == [4096, 1024] and shapes["blocks.11.mlp.fc2.bias"] == [1024]
    assert shapes["norm.weight"] == [1024] and "blocks.24.norm1.weight" not in state
    assert not any("register" in k or k.startswith("head") for k in state)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 49 and all(m.eps == 1e-6 for m in norms)
    assert net.blocks[0].attn.num_heads == 16


def test_other_dinov2_files_are_named_by_their_first_difference():
    with torch.device("meta"):
        large = dinov2.vit_l14()
        base = DINOv2ViT(img_size=518, patch_size=14, embed_dim=768, depth=12, num_heads=12)
    with pytest.raises(ValueError, match=r"vitb\.pth is not DINOv2 ViT-L/14 weights: cls_token has shape "
                                         r"\[1, 1, 768\], ViT-L/14 \[1, 1, 1024\]"):
        check_state_dict(base.state_dict(), large, "vitb.pth")
    reg4 = {**large.state_dict(), "register_tokens": torch.empty(1, 4, 1024, device="meta")}
    with pytest.raises(ValueError, match=r"reg4\.pth .*unexpected key 'register_tokens' \(register tokens: a _reg4"):
        check_state_dict(reg4, large, "reg4.pth")
    shallow = {k: v for k, v in large.state_dict().items() if not k.startswith("blocks.23.")}
    with pytest.raises(ValueError, match=r"key 'blocks\.23\.norm1\.weight' is missing"):
        check_state_dict(shallow, large, "short.pth")
    head = {**large.state_dict(), "head.weight": torch.empty(1000, 1024, device="meta")}
    with pytest.raises(ValueError, match=r"linear\.pth is not DINOv2 ViT-L/14 weights: unexpected key 'head\.weight';"):
        check_state_dict(head, large, "linear.pth")
    check_state_dict(large.state_dict(), large, "ok.pth")


# ------------------------------------------------------------------------------------- (c) preprocessing


def antialiased_bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[out, in] weights of F.interpolate(size, mode='bicubic', antialias=True) (PIL's resampling): centre
    (i + ½)·s, s = in/out, support 2·max(s, 1), taps cubic((j − centre + ½)/max(s, 1), −0.5), normalised."""
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    m = np.zeros((size_out, size_in))
    for i in range(size_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - 2 * stretch + 0.5), 0), min(int(centre + 2 * stretch + 0.5), size_in)
        taps = np.arange(lo, hi)
        w = cubic((taps - centre + 0.5) / stretch, -0.5)
        m[i, lo:hi] = w / w.sum()
    return m


@pytest.mark.parametrize("size", [(32, 32), (448, 448), (300, 40)], ids=["up", "down-2x", "mixed"])
def test_preprocessing_is_edm2s_resize_and_normalisation(size):
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (2, 3, *size), generator=g, dtype=torch.uint8)
    got = dinov2_input(images).double().numpy()
    rows, cols = antialiased_bicubic_matrix(size[0], 224), antialiased_bicubic_matrix(size[1], 224)
    resized = rows @ images.double().numpy() @ cols.T
    mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]  # EDM2 calculate_metrics.py DINOv2Detector
    std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
    want = (resized / 255 - mean) / std
    assert got.shape == (2, 3, 224, 224)
    # float32 resampling of values up to 255; 300/224 is not a float32 number, and torch's float32 filter
    # centres move some weights by ~1e-5: 0.006 of a grey level after the resize, 1e-4 after the normalisation
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 if size[0] % 224 == 0 or 224 % size[0] == 0 else 1e-4)


def test_constant_images_normalise_exactly_and_gray_is_tiled():
    value = torch.tensor([0, 128, 255], dtype=torch.uint8)
    images = value[:, None, None, None].expand(3, 3, 20, 20).contiguous()
    got = dinov2_input(images)[:, :, 100, 37].double()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).double(), torch.tensor([0.229, 0.224, 0.225]).double()
    want = (value.double()[:, None] / 255 - mean) / std
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    gray = torch.randint(0, 256, (2, 1, 30, 30), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    assert torch.equal(dinov2_input(gray), dinov2_input(gray.expand(-1, 3, -1, -1)))


# ------------------------------------------------------------------------------------- (d) FD-DINOv2 end to end


def independent_fd(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    m = features.mean(0)
    s = np.cov(features, rowvar=False)
    root = scipy.linalg.sqrtm(s @ sigma)
    return float(((m - mu) ** 2).sum() + np.trace(s) + np.trace(sigma) - 2 * np.trace(root).real)


@pytest.fixture
def tiny_dinov2(monkeypatch, tmp_path):
    """edmlab's DINOv2 loader with a 1-block, 8-wide ViT instead of ViT-L/14, and a random weights file for it."""
    arch = dict(TINY, depth=1)
    monkeypatch.setattr(dinov2, "build_network", lambda: DINOv2ViT(**arch))
    return tiny_weights(tmp_path / "tiny_dinov2.pth", seed=5, depth=1)


@pytest.fixture
def tiny_network(tmp_path) -> Path:
    """An untrained 8×8 RGB SongUNet network file: images to score, in a second."""
    from edmlab.io.network_file import build_denoiser, save_network

    spec = {"network": {"_target_": "edmlab.nets.SongUNet", "model_channels": 8, "channel_mult": [1],
                        "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0},
            "network_kwargs": dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=0),
            "preconditioning": {"_target_": "edmlab.EDMPrecond", "sigma_data": 0.5}, "shape": [3, 8, 8]}
    torch.manual_seed(0)
    return save_network(tmp_path / "network.pt", build_denoiser(spec), spec)


def eval_common(ckpt) -> list[str]:
    return ["logger=none", "grid_images=0", f"ckpt={ckpt}", "num_samples=12", "sampler.num_steps=2", "batch=12",
            "device=cpu", "metrics.dataset=false"]


def edm2_style_ref(path: Path, dim: int = 8, seed: int = 6) -> dict:
    """A random N(μ, Σ) written in NVlabs/edm2's dataset-refs layout (calculate_metrics.py save_stats)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    ref = {"mu": rng.normal(size=dim), "sigma": a @ a.T / dim + np.eye(dim)}
    with open(path, "wb") as f:
        pickle.dump({"num_images": 100, "fid": {"mu": np.zeros(3), "sigma": np.eye(3)}, "fd_dinov2": ref}, f)
    return ref


def test_fd_dinov2_through_eval_matches_an_independent_computation(tiny_dinov2, tiny_network, tmp_path):
    """Two seed ranges of 12 images: the first range's FD-DINOv2 equals numpy/scipy's from the features of the saved
    images; the reported value is the minimum over the ranges (as FID's)."""
    from edmlab.evaluation import evaluate

    ref = edm2_style_ref(tmp_path / "img8.pkl")
    overrides = ["save=npz", "metrics.fid.seed_ranges=2", "metrics.fd_dinov2.enabled=true",
                 f"metrics.fd_dinov2.ref={tmp_path / 'img8.pkl'}", f"metrics.fd_dinov2.weights_path={tiny_dinov2}",
                 "metrics.fd_dinov2.batch=5"]
    record = evaluate(compose("eval", [*eval_common(tiny_network), *overrides], tmp_path / "fd"))
    assert record["status"] == "ok" and "fid" not in record
    with np.load(tmp_path / "fd" / "samples.npz") as z:  # the first range's images, seeds 0-11
        images = torch.from_numpy(z["images"]).permute(0, 3, 1, 2)
    features = dinov2_features(images, tiny_dinov2, batch_size=5).double().numpy()
    assert features.shape == (12, 8)
    first, second = record["fd_dinov2_per_range"]
    # Both sides compute float32 features (relative rounding 6e-8) of the same images, possibly through other kernel
    # paths: measured 5e-14 (AVX512), 1.6e-14 (ATEN_CPU_CAPABILITY=default), 9e-9 on another CPU; 1e-6 allows
    # float32 disagreement, while a preprocessing error (the 0.1 interpolation offset: features off by 0.1) fails.
    assert first == pytest.approx(independent_fd(features, ref["mu"], ref["sigma"]), rel=1e-6)
    assert record["fd_dinov2"] == min(first, second) and abs(first - second) > 1e-6 * first


def test_ref_stats_cli_writes_dinov2_statistics(tiny_dinov2, tmp_path, capsys):
    """--detector dinov2: an .npz (mu, sigma), or with a .pkl destination NVlabs/edm2's layout; both hold the
    mean and unbiased covariance of the features of the images (grayscale digits, tiled to RGB)."""
    from edmlab.cli.ref_stats import main
    from edmlab.evaluation.metrics.ref_stats import load_uint8_images

    common = ["--data", "digits", "--max-images", "20", "--dinov2-weights", str(tiny_dinov2)]
    npz = main([*common, "--detector", "dinov2", "--dest", str(tmp_path / "digits_dinov2.npz")])
    pkl = main([*common, "--detector", "dinov2", "--dest", str(tmp_path / "digits.pkl")])
    digits = load_uint8_images("digits", max_images=20)
    assert digits.shape[1] == 1
    features = dinov2_features(digits, tiny_dinov2).double().numpy()
    for path in (npz, pkl):
        mu, sigma = load_statistics(path, metric="fd_dinov2")
        np.testing.assert_allclose(mu, features.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    with open(pkl, "rb") as f:
        stored = pickle.load(f)  # written by the test's own run above: plain pickle is safe here
    assert set(stored) == {"num_images", "fd_dinov2"} and stored["num_images"] == 20
    with pytest.raises(SystemExit, match="2"):
        main([*common, "--detector", "inception,dinov2", "--dest", str(tmp_path / "both.npz")])
    assert "--detector inception,dinov2 writes several statistics: give a .pkl --dest" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main([*common, "--detector", "dino", "--dest", str(tmp_path / "x.npz")])
    assert "--detector 'dino': choose inception, dinov2 or both, comma-separated" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- (e) errors


def test_fd_dinov2_settings_are_checked_before_sampling(tiny_dinov2, tiny_network, tmp_path):
    from edmlab.evaluation import evaluate
    from edmlab.evaluation.metrics.frechet import save_statistics

    save_statistics(tmp_path / "inception.npz", np.zeros(2048), np.eye(2048))
    weights = f"metrics.fd_dinov2.weights_path={tiny_dinov2}"
    cases = [(["ckpt=bench:ring8", "metrics.fd_dinov2.enabled=true"],
              r"FID/KID/IS/precision-recall/FD-DINOv2 score images, but bench:ring8 makes points"),
             (["ckpt=bench:ring8", "metrics.prc=true"],
              r"FID/KID/IS/precision-recall/FD-DINOv2 score images, but bench:ring8 makes points"),
             ([*eval_common(tiny_network), "metrics.fd_dinov2.enabled=true", weights],
              r"metrics\.fd_dinov2\.enabled=true needs metrics\.fd_dinov2\.ref="),
             ([*eval_common(tiny_network), f"metrics.fd_dinov2.ref={tmp_path / 'inception.npz'}"],
              r"metrics\.fd_dinov2\.ref=\S+ is set but metrics\.fd_dinov2\.enabled=false"),
             ([*eval_common(tiny_network), "metrics.fd_dinov2.enabled=true", weights,
               f"metrics.fd_dinov2.ref={tmp_path / 'inception.npz'}"],
              r"inception\.npz holds 2048-d statistics, but DINOv2 features are 8-d"),
             ([*eval_common(tiny_network), "metrics.fd_dinov2.batch=0"], r"metrics\.fd_dinov2\.batch=0 must be")]
    for k, (overrides, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            evaluate(compose("eval", ["logger=none", *overrides], tmp_path / f"job{k}"))


def test_missing_weights_name_the_file_the_url_and_the_option(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"absent\.pth not found: .*dinov2_vitl14_pretrain\.pth \(download "
                                                r"https://dl\.fbaipublicfiles\.com/dinov2/dinov2_vitl14/dinov2_vitl14"
                                                r"_pretrain\.pth\); pass metrics\.fd_dinov2\.weights_path="):
        load_dinov2(tmp_path / "absent.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"hub/checkpoints/dinov2_vitl14_pretrain\.pth not found"):
        load_dinov2(None)


def test_wrong_truncated_and_foreign_files_are_refused_in_one_line(tiny_dinov2, tmp_path):
    inception_like = tmp_path / "inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, inception_like)
    wider = tiny_weights(tmp_path / "wider.pth", embed_dim=16, depth=1)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_dinov2.read_bytes()[:500])
    not_tensors = tmp_path / "dict.pth"
    torch.save({"cls_token": [1, 2]}, not_tensors)
    cases = [(inception_like, r"inception\.pth is not DINOv2 ViT-L/14 weights: key 'cls_token' is missing"),
             (wider, r"wider\.pth is not DINOv2 ViT-L/14 weights: cls_token has shape \[1, 1, 16\], ViT-L/14 "
                     r"\[1, 1, 8\]"),
             (truncated, r"truncated\.pth is not a readable torch state_dict \("),
             (not_tensors, r"dict\.pth holds a dict of non-tensors, not a state_dict of tensors")]
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            load_dinov2(path)
        assert "\n" not in str(info.value)
    assert dinov2_features(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), tiny_dinov2).shape == (2, 8)


class RunsCode:
    """An object whose unpickling would run ``os.system`` (creating the marker file)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_an_edm2_statistics_pickle_naming_another_global_is_refused_unrun(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "img64.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"fid": {"mu": np.zeros(2), "sigma": np.eye(2)},
                     "fd_dinov2": {"mu": RunsCode(f"touch {marker}"), "sigma": np.eye(2)}}, f)
    for metric in ("fid", "fd_dinov2"):
        with pytest.raises(UnsafePickleError, match=r"img64\.pkl: refused global (posix|os|nt)\.system; reference "
                                                    r"statistics hold numpy arrays only"):
            load_statistics(evil, metric=metric)
    assert not marker.exists()
