"""DhariwalUNet: the ADM U-Net of Dhariwal & Nichol (2021), as used for ImageNet-64 in EDM (Karras et al. 2022, Table 7).

Conditioning: emb = SiLU(L1(SiLU(L0(e(c_noise) + W_aug·a))) + W_label·y), with e the positional embedding
(endpoint=False), W_label ~ N(0, 1) without bias, and W_aug zero at init.
Blocks use scale-shift conditioning GN(h)·(1+scale)+shift, attention with 64 channels per head at every
resolution in ``attn_resolutions``, and zero-initialised output convs, so the network outputs exactly 0 at init.
Module names follow NVlabs/edm so that its state dicts load unchanged.
"""
import math

import torch
from torch.nn.functional import silu

from edmlab.nets.layers import (
    Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetBlock, check_image_input, check_unet_args, conditioning_inputs,
)


class DhariwalUNet(torch.nn.Module):
    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: list[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: list[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
    ):
        check_unet_args("DhariwalUNet", img_resolution, in_channels, out_channels, label_dim, augment_dim,
                        model_channels, channel_mult, channel_mult_emb, num_blocks, dropout, label_dropout)
        if model_channels % 2 or model_channels < 2:
            raise ValueError(f"DhariwalUNet: model_channels must be even (positional embedding), got {model_channels}")
        super().__init__()
        self.img_resolution = img_resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.label_dim = label_dim
        self.augment_dim = augment_dim
        self.label_dropout = label_dropout

        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0.0, init_bias=0.0)

        def block(cin, cout, **kw):
            return UNetBlock(cin, cout, emb_channels, channels_per_head=64, dropout=dropout, init=init,
                             init_zero=init_zero, **kw)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim)) if label_dim else None)

        self.enc = torch.nn.ModuleDict()
        skip_channels = []
        c = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(c, model_channels * mult, kernel=3, **init)
                c = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = block(c, c, down=True)
            skip_channels.append(c)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = block(c, model_channels * mult, attention=res in attn_resolutions)
                c = model_channels * mult
                skip_channels.append(c)

        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(c, c, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(c, c)
            else:
                self.dec[f"{res}x{res}_up"] = block(c, c, up=True)
            for idx in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = block(c + skip_channels.pop(), model_channels * mult,
                                                            attention=res in attn_resolutions)
                c = model_channels * mult
        self.out_norm = GroupNorm(c)
        self.out_conv = Conv2d(c, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        """F(x; c_noise, y, a) → [N, out_channels, H, W] in the dtype of x."""
        check_image_input(self, x)
        noise_labels, class_labels, augment_labels = conditioning_inputs(
            self, x, noise_labels, class_labels, augment_labels)
        emb = self.map_noise(noise_labels)
        if augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if class_labels is not None:
            emb = emb + self.map_label(class_labels)
        emb = silu(emb)

        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for name, layer in self.dec.items():
            if name.split("_", 1)[1].startswith("block"):
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(silu(self.out_norm(x)))
