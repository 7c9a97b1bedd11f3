"""EDM2's magnitude-preserving U-Net and its preconditioning (Karras et al. 2024, *Analyzing and Improving the
Training Dynamics of Diffusion Models*, config G: Fig. 21, Appendix B).

Every layer keeps the expected magnitude (RMS) of unit-variance activations at 1: weights are normalised per
output channel (forced weight normalisation, Eq. 66, so the stored weights cannot grow), there are no biases, no
group norms (pixel norm instead), SiLU and the residual/skip sums are rescaled (Eqs. 81, 88, 103), attention is
cosine attention, the input carries a constant channel, and the output gain starts at zero.

Module names, parameter shapes and their order are those of NVlabs/edm2's ``training/networks_edm2.py`` (UNet,
Precond), so its state dicts load unchanged: ``EDM2Precond(EDM2UNet(...))`` has the keys of its ``Precond``.
"""
import math

import torch
from torch.nn.functional import dropout, silu

from edmlab.nets.layers import (
    _filter_2d, check_image_input, check_unet_args, conditioning_inputs, downsample_2x, upsample_2x,
)

SILU_RMS = 0.596  # E[silu(x)²]^½ for x ~ N(0, 1)


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x / (ε + ‖x‖/√n) over ``dim`` (default: all but the first), n the number of elements normalised together:
    unit RMS along ``dim`` (EDM2 Eq. 66 for weights, the pixel norm for activations)."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """Magnitude-preserving SiLU, silu(x)/0.596 (EDM2 Eq. 81)."""
    return silu(x) / SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving sum ((1−t)·a + t·b)/√((1−t)² + t²) (EDM2 Eq. 88); t balances a (0) against b (1)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation (EDM2 Eq. 103): [w_a·a, w_b·b] with C = √((N_a + N_b)/((1−t)² + t²)),
    w_a = C·(1−t)/√N_a, w_b = C·t/√N_b, where N_a, N_b are the sizes along ``dim``."""
    n_a, n_b = a.shape[dim], b.shape[dim]
    c = math.sqrt((n_a + n_b) / ((1 - t) ** 2 + t**2))
    return torch.cat([c * (1 - t) / math.sqrt(n_a) * a, c * t / math.sqrt(n_b) * b], dim=dim)


def resample(x: torch.Tensor, taps=(1, 1), mode: str = "keep") -> torch.Tensor:
    """2× down- or up-sampling by the separable FIR filter ``taps`` (per channel), or ``x`` itself for "keep"."""
    if mode == "keep":
        return x
    f = _filter_2d(list(taps)).to(x.device, x.dtype)
    pad = (f.shape[-1] - 1) // 2
    return downsample_2x(x, f, pad) if mode == "down" else upsample_2x(x, f, pad)


class MPFourier(torch.nn.Module):
    """Magnitude-preserving Fourier features √2·cos(2π(f·x + φ)), f ~ N(0, bandwidth²), φ ~ U[0, 1) fixed at
    construction (EDM2 Eq. 75) from ``generator`` (None: torch's global one, as NVlabs); unit RMS over the random
    phases."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels, generator=generator) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels, generator=generator))

    def forward(self, x):
        y = torch.outer(x.to(torch.float32), self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(torch.nn.Module):
    """Magnitude-preserving convolution (``kernel=[k, k]``) or linear layer (``kernel=[]``), no bias (EDM2 Eq. 47):
    ŵ_i = gain·w_i/‖w_i‖ for each output channel i, so y has the RMS of x for uncorrelated unit-variance inputs.
    Forced weight normalisation (Eq. 66): in training, every forward first rescales the stored w_i to ‖w_i‖ = √fan_in,
    so optimizer steps cannot grow the weights."""

    def __init__(self, in_channels: int, out_channels: int, kernel: list[int]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x, gain=1.0):
        w = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return torch.nn.functional.conv2d(x, w, padding=w.shape[-1] // 2)


class Block(torch.nn.Module):
    """EDM2's encoder ("enc") or decoder ("dec") block (Fig. 21): [resample] → [1×1 skip conv, pixel norm (enc)] →
    residual branch conv(mp_silu(x)), modulated by (1 + gain·linear(emb)), mp_silu, dropout, conv → mp_sum with
    ``res_balance`` → optional cosine self-attention (q, k, v pixel-normed per head) mp_summed with
    ``attn_balance`` → clip to ±clip_act."""

    def __init__(self, in_channels, out_channels, emb_channels, flavor="enc", resample_mode="keep",
                 resample_filter=(1, 1), attention=False, channels_per_head=64, dropout=0.0, res_balance=0.3,
                 attn_balance=0.3, clip_act=256):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = list(resample_filter)
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        if self.num_heads and out_channels % self.num_heads:
            raise ValueError(f"EDM2UNet: {out_channels} channels do not split into {self.num_heads} attention heads "
                             f"(channels_per_head={channels_per_head}); pick a channels_per_head that divides them")
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x, emb):
        x = resample(x, self.resample_filter, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)

        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        if self.num_heads:
            x = mp_sum(x, self._cosine_attention(x), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x

    def _cosine_attention(self, x):
        """softmax(q̂ᵀk̂/√c) v̂ per head, q̂, k̂, v̂ normalised over the head's c channels at every pixel."""
        y = self.attn_qkv(x)
        y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
        q, k, v = normalize(y, dim=2).unbind(3)
        w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
        y = torch.einsum("nhqk,nhck->nhcq", w, v)
        return self.attn_proj(y.reshape(*x.shape))


class EDM2UNet(torch.nn.Module):
    """F(x; c_noise, y) of EDM2 (Fig. 21, config G). Embedding: mp_silu(mp_sum(linear(MPFourier(c_noise)),
    linear(√label_dim·y), label_balance)). Encoder per level: a 3×3 conv of [x, 1] (level 0) or a down-sampling
    block, then ``num_blocks`` blocks; decoder per level: two middle blocks (the first with attention) at the lowest
    resolution or an up-sampling block, then ``num_blocks + 1`` blocks on mp_cat(x, skip, concat_balance); output
    a 3×3 conv with gain ``out_gain`` (0 at init).

    Channels: model_channels·channel_mult per level; noise features model_channels·channel_mult_noise (default the
    first level's), embedding model_channels·channel_mult_emb (default the widest level's). NVlabs' img_channels is
    ``in_channels`` (= ``out_channels``); EDM2 has no augmentation conditioning (``augment_dim`` must be 0);
    ``label_dropout`` zeroes class labels in training for classifier-free guidance (not in NVlabs; no parameters).
    Remaining keywords are those of :class:`Block`."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult=(1, 2, 3, 4),
                 channel_mult_noise: int | None = None, channel_mult_emb: int | None = None, num_blocks: int = 3,
                 attn_resolutions=(16, 8), label_balance: float = 0.5, concat_balance: float = 0.5,
                 dropout: float = 0.0, label_dropout: float = 0.0, **block_kwargs):
        super().__init__()
        check_unet_args("EDM2UNet", img_resolution, in_channels, out_channels, label_dim, augment_dim, model_channels,
                        channel_mult, channel_mult_emb or 1, num_blocks, dropout, label_dropout)
        if augment_dim:
            raise ValueError(f"EDM2UNet has no augmentation conditioning, got augment_dim={augment_dim}: "
                             f"train network=edm2 with augment=none")
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.augment_dim, self.label_dropout = label_dim, 0, label_dropout
        block_kwargs = dict(block_kwargs, dropout=dropout)
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))

        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim else None

        self.enc = torch.nn.ModuleDict()
        cout = in_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, flavor="enc", resample_mode="down",
                                                      **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="enc",
                                                            attention=res in attn_resolutions, **block_kwargs)

        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up",
                                                    **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="dec",
                                                            attention=res in attn_resolutions, **block_kwargs)
        self.out_conv = MPConv(cout, out_channels, kernel=[3, 3])

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        """F(x; c_noise, y) → [N, out_channels, H, W]."""
        check_image_input(self, x)
        noise_labels, class_labels, _ = conditioning_inputs(self, x, noise_labels, class_labels, None)
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if class_labels is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * math.sqrt(self.label_dim)), t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


