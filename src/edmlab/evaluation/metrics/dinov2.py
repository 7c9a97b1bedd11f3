"""DINOv2 ViT-L/14 features for FD-DINOv2, the second metric of EDM2 (Karras et al. 2024, "Analyzing and improving
the training dynamics of diffusion models", Sec. 5; Stein et al. 2023 proposed the Fréchet distance on DINOv2).

The network is written here; its parameter names and shapes are those of facebookresearch/dinov2's
``dinov2_vitl14`` (``dinov2/hub/backbones.py``: ``vit_large(img_size=518, patch_size=14, init_values=1.0,
block_chunks=0, num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1)``), so the file torch.hub
downloads for it, ``dinov2_vitl14_pretrain.pth``, loads with ``load_state_dict(strict=True)``. The forward pass is
that of ``DinoVisionTransformer.forward(is_training=False)`` (``dinov2/models/vision_transformer.py``,
``dinov2/layers/{patch_embed,attention,block,layer_scale,mlp}.py``):

    t = [cls; conv14×14/14(x) flattened] + pos(h/14, w/14)                        (tokens [N, 1 + hw/196, D])
    t ← t + γ₁ ⊙ Attn(LN(t)),  t ← t + γ₂ ⊙ W₂ GELU(W₁ LN(t) + b₁) + b₂           (24 blocks, LayerScale γ)
    features = LN(t)[:, 0]                                                          (the normed CLS token, D = 1024)

LN is LayerNorm with ε = 1e-6; Attn is 16-head softmax attention with the 1/√64 scale, qkv and output projections
with bias. The positional embedding is learnt on the 37×37 grid of 518-pixel images; another grid gets its patch
part resized by bicubic interpolation (no antialias) with the scale factor (g + 0.1)/37 per axis
(``interpolate_pos_encoding``: DINO's "interpolate_offset" of 0.1), the CLS part kept.

EDM2's ``DINOv2Detector`` (``calculate_metrics.py``, default ``resize_mode='torch'``) feeds it uint8 RGB images
[N, 3, H, W] as

    x = interpolate(float32(images), 224×224, bicubic, antialias) / 255,  x ← (x − mean) / std

with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). Grayscale images are tiled to three
channels first, as for Inception (``edmlab.evaluation.metrics.inception``).

Weights: a local file only (``weights_path``, default torch.hub's cache ``<hub dir>/checkpoints/<file>``); nothing is
downloaded. A missing file, a file of another network (ViT-B/14, the ``_reg4`` variants, Inception) or a corrupt one
is a one-line error naming the file.
"""
import math
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

WEIGHTS_FILE = "dinov2_vitl14_pretrain.pth"
WEIGHTS_URL = f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/{WEIGHTS_FILE}"
WEIGHTS_OPTION = "metrics.fd_dinov2.weights_path"

# dinov2_vitl14 of facebookresearch/dinov2 (hub/backbones.py, models/vision_transformer.py vit_large).
VIT_L14 = dict(img_size=518, patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4)
LAYER_NORM_EPS = 1e-6
INTERPOLATE_OFFSET = 0.1

# EDM2 calculate_metrics.py DINOv2Detector.
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MAX_CACHED_NETWORKS = 1  # ViT-L/14 is 1.2 GB in float32

_NETWORKS: dict[tuple[str, str], nn.Module] = {}


class LayerScale(nn.Module):
    """x ↦ γ ⊙ x with a learnt per-channel γ (``dinov2/layers/layer_scale.py``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head softmax attention, softmax(q kᵀ/√d_head) v, with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """W₂ GELU(W₁ x + b₁) + b₂ (exact GELU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches, each projected to D by one strided convolution."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DINOv2ViT(nn.Module):
    """A DINOv2 vision transformer without registers; ``forward`` gives the normed CLS token [N, D]."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        grid = img_size // patch_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # training-time masking only; in the file

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """pos [1, 1 + g_h·g_w, D] for an image of height × width pixels (g = pixels // patch size): the learnt
        one for a square image of the training grid, else its patch part resized bicubically with the scale
        factors (g + 0.1)/M, M the training grid."""
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        count = self.pos_embed.shape[1] - 1
        if grid_h * grid_w == count and height == width:
            return self.pos_embed
        side = math.isqrt(count)
        pos = self.pos_embed.float()
        patch = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        scale = ((grid_h + INTERPOLATE_OFFSET) / side, (grid_w + INTERPOLATE_OFFSET) / side)
        patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=False)
        if tuple(patch.shape[-2:]) != (grid_h, grid_w):
            raise RuntimeError(f"position-embedding interpolation gave {tuple(patch.shape[-2:])}, "
                               f"not the {grid_h}×{grid_w} patch grid")
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([pos[:, :1], patch], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"DINOv2 input of {height}×{width} pixels is not a multiple of the patch size "
                             f"{self.patch_size}")
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(height, width)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def vit_l14() -> DINOv2ViT:
    """The architecture of ``dinov2_vitl14`` (304,368,640 parameters)."""
    return DINOv2ViT(**VIT_L14)


# The architecture the weights file is loaded into; tests substitute a small one.
build_network = vit_l14


def cached_weights_path() -> str:
    """Where torch.hub keeps ``dinov2_vitl14_pretrain.pth`` after ``torch.hub.load('facebookresearch/dinov2', ...)``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_FILE)


def resolve_weights(weights_path: str | os.PathLike | None = None) -> str:
    """``weights_path``, or torch.hub's cached file when None; a FileNotFoundError saying where to get it."""
    path = os.path.expanduser(os.fspath(weights_path)) if weights_path is not None else cached_weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"DINOv2 weights {path} not found: FD-DINOv2 needs facebookresearch/dinov2's ViT-L/14 file {WEIGHTS_FILE} "
            f"(download {WEIGHTS_URL}); pass {WEIGHTS_OPTION}=/path/to/{WEIGHTS_FILE} (ref_stats: --dinov2-weights) "
            f"or put it at {cached_weights_path()}")
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def read_state_dict(path: str) -> dict:
    """The tensors of a ``torch.save`` state_dict file, read with ``weights_only=True``."""
    expected = f"expected {WEIGHTS_FILE} from {WEIGHTS_URL}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip, a foreign pickle, a refused global: all mean a bad file
        raise ValueError(f"{path} is not a readable torch state_dict ({_first_line(e)}); {expected}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = type(state).__name__ if not isinstance(state, dict) else "dict of non-tensors"
        raise ValueError(f"{path} holds a {kind}, not a state_dict of tensors; {expected}")
    return state


def check_state_dict(state: dict, network: nn.Module, path: str) -> None:
    """A ValueError naming the first key of ``network`` missing from ``state`` or of another shape, or the first
    key ``state`` has in excess."""
    ours = network.state_dict()
    for key, value in ours.items():
        if key not in state:
            raise ValueError(f"{path} is not DINOv2 ViT-L/14 weights: key {key!r} is missing (the file has "
                             f"{len(state)} keys, the first {next(iter(state), None)!r}); expected {WEIGHTS_FILE} "
                             f"from {WEIGHTS_URL}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"{path} is not DINOv2 ViT-L/14 weights: {key} has shape {list(state[key].shape)}, "
                             f"ViT-L/14 {list(value.shape)}; expected {WEIGHTS_FILE} (not ViT-S/B/g) from "
                             f"{WEIGHTS_URL}")
    extra = next((k for k in state if k not in ours), None)
    if extra is not None:
        kind = " (register tokens: a _reg4 file)" if "register" in extra else ""
        raise ValueError(f"{path} is not DINOv2 ViT-L/14 weights: unexpected key {extra!r}{kind}; expected "
                         f"{WEIGHTS_FILE} from {WEIGHTS_URL}")


def feature_dim() -> int:
    """The size of the features of ``build_network()`` (1024 for ViT-L/14), from its layout alone: no weights."""
    with torch.device("meta"):
        return build_network().embed_dim


def load_dinov2(weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """``build_network()`` with the weights of the file, in eval mode on ``device``; kept per file and device."""
    path = resolve_weights(weights_path)
    key = (os.path.abspath(path), str(torch.device(device)))
    if key not in _NETWORKS:
        if len(_NETWORKS) >= MAX_CACHED_NETWORKS:
            _NETWORKS.clear()
        state = read_state_dict(path)
        with torch.device("meta"):
            net = build_network()
        check_state_dict(state, net, path)
        net.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True, assign=True)
        _NETWORKS[key] = net.eval().requires_grad_(False).to(device)
    return _NETWORKS[key]


def dinov2_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """EDM2's DINOv2 preprocessing of uint8 [N, 1|3, H, W]: float32 [N, 3, 224, 224], resized (bicubic,
    antialias), scaled to [0, 1] and normalised by ImageNet's mean and std."""
    from edmlab.evaluation.metrics.inception import _as_rgb_uint8

    x = _as_rgb_uint8(images_uint8, "DINOv2").to(torch.float32)
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True)
    x = x / 255
    x = x - torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return x / torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)


@torch.no_grad()
def dinov2_features(images_uint8: torch.Tensor | np.ndarray, weights_path: str | os.PathLike | None = None,
                    batch_size: int = 64, device: str | torch.device = "cpu") -> torch.Tensor:
    """The DINOv2 features [N, D] (float32, CPU) of uint8 images [N, 1|3, H, W], as EDM2's FD-DINOv2 uses them."""
    if isinstance(images_uint8, np.ndarray):
        images_uint8 = torch.from_numpy(images_uint8)
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    net = load_dinov2(weights_path, device)
    chunks = [net(dinov2_input(images_uint8[i : i + batch_size].to(device))).cpu()
              for i in range(0, len(images_uint8), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, net.embed_dim)
