"""Building blocks shared by SongUNet (DDPM++/NCSN++), DhariwalUNet (ADM) and the point-data MLP.

Parameter names and shapes follow NVlabs/edm's ``training/networks.py`` so that a state dict maps
one-to-one. Every layer casts its weights to the dtype of its input, so an fp32 network runs on
bf16/fp16/fp64 inputs without autocast, as in EDM.
"""
import math

import torch
from torch.nn.functional import conv2d, conv_transpose2d, dropout, group_norm, scaled_dot_product_attention, silu

from edmlab.infra.checks import is_int

INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


def init_tensor(shape: list[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random tensor of the named scheme.

    xavier_uniform: U(±√(6/(fan_in+fan_out))); xavier_normal: N(0, 2/(fan_in+fan_out));
    kaiming_uniform: U(±√(3/fan_in)); kaiming_normal: N(0, 1/fan_in).
    """
    if mode == "xavier_uniform":
        return torch.empty(shape).uniform_(-1, 1) * math.sqrt(6 / (fan_in + fan_out))
    if mode == "xavier_normal":
        return torch.empty(shape).normal_() * math.sqrt(2 / (fan_in + fan_out))
    if mode == "kaiming_uniform":
        return torch.empty(shape).uniform_(-1, 1) * math.sqrt(3 / fan_in)
    if mode == "kaiming_normal":
        return torch.empty(shape).normal_() * math.sqrt(1 / fan_in)
    raise ValueError(f"init_mode must be one of {INIT_MODES}, got {mode!r}")


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(like.dtype)


class Linear(torch.nn.Module):
    """y = x Wᵀ + b with W ~ ``init_mode``·init_weight and b ~ ``init_mode``·init_bias (0 by default)."""

    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1.0, init_bias=0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(init_tensor([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(init_tensor([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        return torch.nn.functional.linear(x, _cast(self.weight, x), _cast(self.bias, x))


def _filter_2d(taps: list[float]) -> torch.Tensor:
    """Separable FIR filter f fᵀ / (Σf)², shape [1, 1, k, k]: [1,1] is a box, [1,3,3,1] a binomial."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


def upsample_2x(x: torch.Tensor, f: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-channel transposed convolution with 4·f at stride 2 (gain 4 keeps the mean)."""
    c = x.shape[1]
    return conv_transpose2d(x, (f * 4).expand(c, 1, -1, -1), groups=c, stride=2, padding=padding)


def downsample_2x(x: torch.Tensor, f: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-channel convolution with f at stride 2."""
    c = x.shape[1]
    return conv2d(x, f.expand(c, 1, -1, -1), groups=c, stride=2, padding=padding)


class Conv2d(torch.nn.Module):
    """k×k convolution with optional 2× up- or down-sampling by the FIR ``resample_filter``.

    ``kernel=0`` gives a parameter-free resampler. ``fused_resample`` (down only, as NCSN++ uses it)
    convolves first at padding k//2 + (len(f)−1)//2 and then filters at stride 2.
    """

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=(1, 1),
                 fused_resample=False, init_mode="kaiming_normal", init_weight=1.0, init_bias=0.0):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: choose at most one of up=True and down=True")
        if fused_resample and up:
            raise ValueError("Conv2d: fused_resample is implemented for down-sampling only; set fused_resample=False")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = torch.nn.Parameter(init_tensor(shape, **fans) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(init_tensor([out_channels], **fans) * init_bias) if kernel and bias else None
        self.register_buffer("resample_filter", _filter_2d(list(resample_filter)) if up or down else None)

    def forward(self, x):
        w, b, f = _cast(self.weight, x), _cast(self.bias, x), _cast(self.resample_filter, x)
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.down and w is not None:
            x = downsample_2x(conv2d(x, w, padding=w_pad + f_pad), f, padding=0)
        else:
            if self.up:
                x = upsample_2x(x, f, padding=f_pad)
            if self.down:
                x = downsample_2x(x, f, padding=f_pad)
            if w is not None:
                x = conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
        return x


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(limit, 1) + 1) if n % d == 0)


class GroupNorm(torch.nn.Module):
    """Group normalisation with min(num_groups, C/min_channels_per_group) groups.

    When that count does not divide C the largest divisor below it is used (EDM's nets would fail there;
    all of EDM's own configurations divide exactly, so they are unchanged). ``num_groups=1`` on [N, C]
    is a layer norm.
    """

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = _largest_divisor_at_most(num_channels, min(num_groups, num_channels // min_channels_per_group))
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return group_norm(x, self.num_groups, _cast(self.weight, x), _cast(self.bias, x), self.eps)


class UNetBlock(torch.nn.Module):
    """Residual block of DDPM++, NCSN++ and ADM, with optional resampling and self-attention.

    h = conv0(SiLU(GN(x)));  h = SiLU(GN(h)·(1+scale)+shift) if adaptive_scale else SiLU(GN(h + a)),
    where (scale, shift) or a = affine(emb); h = conv1(dropout(h));  x = (h + skip(x))·skip_scale.
    Attention (heads of width C/num_heads over the H·W positions): x = (proj(attn(qkv(GN(x)))) + x)·skip_scale.
    With attention and ``num_heads=None`` the head count is C // channels_per_head (at least 1, a divisor of C).
    """

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0.0, skip_scale=1.0, eps=1e-5,
                 resample_filter=(1, 1), resample_proj=False, adaptive_scale=True,
                 init=None, init_zero=None, init_attn=None):
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero if init_zero is not None else {"init_weight": 0})
        init_attn = dict(init_attn if init_attn is not None else init)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        elif num_heads is not None:
            self.num_heads = num_heads
        else:
            self.num_heads = _largest_divisor_at_most(out_channels, out_channels // channels_per_head)
        if self.num_heads and out_channels % self.num_heads:
            raise ValueError(f"UNetBlock: out_channels={out_channels} is not divisible by num_heads={self.num_heads}")
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        resample = dict(up=up, down=down, resample_filter=resample_filter)

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, **resample, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **init_attn)
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = silu(self.norm1(h) * (scale + 1) + shift)
        else:
            h = silu(self.norm1(h + params))
        h = self.conv1(dropout(h, p=self.dropout, training=self.training))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attention(self.norm2(x))) + x) * self.skip_scale
        return x

    def _attention(self, x):
        """softmax(qᵀk/√d) v per head; qkv channels are laid out [head, channel, (q,k,v)] as in EDM."""
        n, c, height, width = x.shape
        d = c // self.num_heads
        q, k, v = self.qkv(x).reshape(n * self.num_heads, d, 3, height * width).unbind(2)
        a = scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return a.transpose(1, 2).reshape(n, c, height, width)


class PositionalEmbedding(torch.nn.Module):
    """Transformer sinusoids of a scalar: [cos(x·ω_i), sin(x·ω_i)], ω_i = (1/max_positions)^(i/(C/2 − endpoint)).

    ``sin_first=True`` returns [sin, cos] (DDPM++'s order in score_sde).
    """

    def __init__(self, num_channels, max_positions=10000, endpoint=False, sin_first=False):
        super().__init__()
        if num_channels < 2 or num_channels % 2 or (endpoint and num_channels < 4):
            raise ValueError(f"PositionalEmbedding: num_channels must be even and ≥ {4 if endpoint else 2}, got {num_channels}")
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint
        self.sin_first = sin_first

    def forward(self, x):
        half = self.num_channels // 2
        exponent = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        x = torch.outer(x, ((1 / self.max_positions) ** exponent).to(x.dtype))
        return torch.cat([x.sin(), x.cos()] if self.sin_first else [x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features of a scalar: [cos(2π x f_i), sin(2π x f_i)], f_i ~ N(0, scale²) fixed at init (NCSN++)."""

    def __init__(self, num_channels, scale=16.0, sin_first=False):
        super().__init__()
        if num_channels < 2 or num_channels % 2:
            raise ValueError(f"FourierEmbedding: num_channels must be even and ≥ 2, got {num_channels}")
        self.sin_first = sin_first
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.sin(), x.cos()] if self.sin_first else [x.cos(), x.sin()], dim=1)


EMBEDDINGS = ("positional", "fourier")


def noise_embedding(embedding_type: str, num_channels: int, sin_first: bool = False) -> torch.nn.Module:
    """DDPM++'s positional embedding (endpoint=True) or NCSN++'s Fourier embedding (scale 16)."""
    if embedding_type == "positional":
        return PositionalEmbedding(num_channels, endpoint=True, sin_first=sin_first)
    if embedding_type == "fourier":
        return FourierEmbedding(num_channels, sin_first=sin_first)
    raise ValueError(f"embedding_type must be one of {EMBEDDINGS}, got {embedding_type!r}")


def conditioning_inputs(module: torch.nn.Module, x: torch.Tensor, noise_labels, class_labels, augment_labels):
    """Check and cast (noise_labels [N], class_labels [N, label_dim] or zeros, augment_labels [N, augment_dim] or None).

    A single noise label is broadcast to the batch. class_labels=None on a conditional net means the zero
    vector (no class); labels given to an unconditional net are ignored. During training, each row of
    class_labels is zeroed with probability ``module.label_dropout`` (classifier-free guidance).
    """
    name = type(module).__name__
    n, dtype = x.shape[0], embedding_dtype(x)
    noise_labels = torch.as_tensor(noise_labels, device=x.device).to(dtype).reshape(-1)
    if noise_labels.numel() == 1:
        noise_labels = noise_labels.expand(n)
    if noise_labels.numel() != n:
        raise ValueError(f"{name}: noise_labels must hold one value per sample ({n}), got shape {tuple(noise_labels.shape)}")
    if module.label_dim:
        if class_labels is None:
            class_labels = torch.zeros(n, module.label_dim, dtype=dtype, device=x.device)
        if tuple(class_labels.shape) != (n, module.label_dim):
            raise ValueError(f"{name}: class_labels must have shape [{n}, {module.label_dim}] (one-hot), "
                             f"got {tuple(class_labels.shape)}")
        class_labels = class_labels.to(dtype)
        if module.training and module.label_dropout:
            keep = torch.rand(n, 1, device=class_labels.device) >= module.label_dropout
            class_labels = class_labels * keep.to(dtype)
    else:
        class_labels = None
    if module.augment_dim and augment_labels is not None:
        if tuple(augment_labels.shape) != (n, module.augment_dim):
            raise ValueError(f"{name}: augment_labels must have shape [{n}, {module.augment_dim}], "
                             f"got {tuple(augment_labels.shape)}")
        augment_labels = augment_labels.to(dtype)
    else:
        augment_labels = None
    return noise_labels, class_labels, augment_labels


def song_embedding(module: torch.nn.Module, noise_labels, class_labels, augment_labels) -> torch.Tensor:
    """SongUNet's conditioning (also the MLP's): map_noise(c_noise) + map_label(√label_dim·y) + map_augment(a),
    then two SiLU layers (map_layer0, map_layer1)."""
    emb = module.map_noise(noise_labels)
    if class_labels is not None:
        emb = emb + module.map_label(class_labels * math.sqrt(module.label_dim))
    if augment_labels is not None:
        emb = emb + module.map_augment(augment_labels)
    return silu(module.map_layer1(silu(module.map_layer0(emb))))


def embedding_dtype(x: torch.Tensor) -> torch.dtype:
    """The conditioning path runs in fp32 (fp64 when the input is fp64), whatever the input precision."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_unet_args(name, img_resolution, in_channels, out_channels, label_dim, augment_dim, model_channels,
                    channel_mult, channel_mult_emb, num_blocks, dropout, label_dropout) -> None:
    """Raise ValueError naming the first bad U-Net constructor argument."""
    for key, value, low in (("img_resolution", img_resolution, 1), ("in_channels", in_channels, 1),
                            ("out_channels", out_channels, 1), ("label_dim", label_dim, 0),
                            ("augment_dim", augment_dim, 0), ("model_channels", model_channels, 1),
                            ("channel_mult_emb", channel_mult_emb, 1), ("num_blocks", num_blocks, 0)):
        if not is_int(value) or value < low:
            raise ValueError(f"{name}: {key} must be an integer ≥ {low}, got {value!r}")
    mults = list(channel_mult) if not isinstance(channel_mult, (str, int)) else []
    if not mults or not all(is_int(m) and m >= 1 for m in mults):
        raise ValueError(f"{name}: channel_mult must be a non-empty list of positive integers, got {channel_mult!r}")
    factor = 2 ** (len(mults) - 1)
    if img_resolution % factor:
        raise ValueError(f"{name}: img_resolution={img_resolution} must be divisible by 2**(len(channel_mult)-1)={factor} "
                         f"(channel_mult={mults}); use a shorter channel_mult or another resolution")
    if not 0 <= dropout < 1:
        raise ValueError(f"{name}: dropout must lie in [0, 1), got {dropout!r}")
    if not 0 <= label_dropout <= 1:
        raise ValueError(f"{name}: label_dropout must lie in [0, 1], got {label_dropout!r}")


def check_image_input(module: torch.nn.Module, x: torch.Tensor) -> None:
    """Raise ValueError unless x has shape [N, in_channels, img_resolution, img_resolution]."""
    want = (module.in_channels, module.img_resolution, module.img_resolution)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"{type(module).__name__}: x must have shape [N, {want[0]}, {want[1]}, {want[2]}], "
                         f"got {tuple(x.shape)}")
