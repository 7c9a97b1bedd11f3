"""SongUNet: the DDPM++ and NCSN++ U-Nets of Song et al. (2021), as configured in EDM (Karras et al. 2022, Table 7).

DDPM++: embedding_type="positional", channel_mult_noise=1, encoder_type="standard", resample_filter=[1,1].
NCSN++: embedding_type="fourier", channel_mult_noise=2, encoder_type="residual", resample_filter=[1,3,3,1].

Conditioning: emb = SiLU(L1(SiLU(L0(e(c_noise) + W_label·(√label_dim·y) + W_aug·a)))), added inside every block.
Encoder per level: a 3×3 conv (level 0) or a down-sampling block, then ``num_blocks`` blocks. Decoder per
level: two middle blocks (the first with attention) at the lowest resolution or an up-sampling block,
then ``num_blocks + 1`` blocks on [x, skip]; output GN → SiLU → 3×3 conv scaled by 1e-5 at init.
Module names follow NVlabs/edm so that its state dicts load unchanged.
"""
import math

import torch
from torch.nn.functional import silu

from edmlab.nets.layers import (
    Conv2d, GroupNorm, Linear, UNetBlock, check_image_input, check_unet_args, conditioning_inputs,
    noise_embedding, song_embedding,
)

ENCODERS = ("standard", "skip", "residual")
DECODERS = ("standard", "skip")


class SongUNet(torch.nn.Module):
    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: list[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: list[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: list[int] = (1, 1),
    ):
        check_unet_args("SongUNet", img_resolution, in_channels, out_channels, label_dim, augment_dim, model_channels,
                        channel_mult, channel_mult_emb, num_blocks, dropout, label_dropout)
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"SongUNet: embedding_type must be 'positional' (DDPM++) or 'fourier' (NCSN++), got {embedding_type!r}")
        if encoder_type not in ENCODERS:
            raise ValueError(f"SongUNet: encoder_type must be one of {ENCODERS}, got {encoder_type!r}")
        if decoder_type not in DECODERS:
            raise ValueError(f"SongUNet: decoder_type must be one of {DECODERS}, got {decoder_type!r}")
        noise_channels = model_channels * channel_mult_noise
        if channel_mult_noise < 1 or noise_channels % 2 or noise_channels < 4:
            raise ValueError(f"SongUNet: model_channels·channel_mult_noise must be even and ≥ 4, got "
                             f"{model_channels}·{channel_mult_noise}")
        if len(resample_filter) < 1 or any(v < 0 for v in resample_filter) or sum(resample_filter) <= 0:
            raise ValueError(f"SongUNet: resample_filter must be non-negative taps with a positive sum, got {resample_filter}")
        super().__init__()
        self.img_resolution = img_resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.label_dim = label_dim
        self.augment_dim = augment_dim
        self.label_dropout = label_dropout
        self.channel_mult = list(channel_mult)
        self.num_blocks = num_blocks
        self.encoder_type = encoder_type
        self.decoder_type = decoder_type

        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        resample_filter = list(resample_filter)

        def block(cin, cout, **kw):
            return UNetBlock(cin, cout, emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                             resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                             init=init, init_zero=init_zero, init_attn=init_attn, **kw)

        self.map_noise = noise_embedding(embedding_type, noise_channels, sin_first=True)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        self.enc = torch.nn.ModuleDict()
        skip_channels = []
        c = in_channels
        c_aux = in_channels
        for level, mult in enumerate(self.channel_mult):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == 0:
                self.enc[f"{tag}_conv"] = Conv2d(c, model_channels, kernel=3, **init)
                c = model_channels
            else:
                self.enc[f"{tag}_down"] = block(c, c, down=True)
                if encoder_type == "skip":
                    self.enc[f"{tag}_aux_down"] = Conv2d(c_aux, c_aux, kernel=0, down=True, resample_filter=resample_filter)
                    self.enc[f"{tag}_aux_skip"] = Conv2d(c_aux, c, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{tag}_aux_residual"] = Conv2d(c_aux, c, kernel=3, down=True, resample_filter=resample_filter,
                                                             fused_resample=True, **init)
                    c_aux = c
            skip_channels.append(c)
            for idx in range(num_blocks):
                self.enc[f"{tag}_block{idx}"] = block(c, model_channels * mult, attention=res in attn_resolutions)
                c = model_channels * mult
                skip_channels.append(c)

        self.dec = torch.nn.ModuleDict()
        last = len(self.channel_mult) - 1
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == last:
                self.dec[f"{tag}_in0"] = block(c, c, attention=True)
                self.dec[f"{tag}_in1"] = block(c, c)
            else:
                self.dec[f"{tag}_up"] = block(c, c, up=True)
            for idx in range(num_blocks + 1):
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{tag}_block{idx}"] = block(c + skip_channels.pop(), model_channels * mult, attention=attention)
                c = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < last:
                    self.dec[f"{tag}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                       resample_filter=resample_filter)
                self.dec[f"{tag}_aux_norm"] = GroupNorm(c, eps=1e-6)
                self.dec[f"{tag}_aux_conv"] = Conv2d(c, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        """F(x; c_noise, y, a) → [N, out_channels, H, W] in the dtype of x."""
        check_image_input(self, x)
        noise_labels, class_labels, augment_labels = conditioning_inputs(
            self, x, noise_labels, class_labels, augment_labels)
        emb = song_embedding(self, noise_labels, class_labels, augment_labels)

        skips = []
        aux = x
        for level in range(len(self.channel_mult)):
            res = self.img_resolution >> level
            tag = f"{res}x{res}"
            if level == 0:
                x = self.enc[f"{tag}_conv"](x)
            else:
                x = self.enc[f"{tag}_down"](x, emb)
                if self.encoder_type == "skip":
                    aux = self.enc[f"{tag}_aux_down"](aux)
                    x = x + self.enc[f"{tag}_aux_skip"](aux)
                if self.encoder_type == "residual":
                    x = aux = (x + self.enc[f"{tag}_aux_residual"](aux)) / math.sqrt(2)
            skips.append(x)
            for idx in range(self.num_blocks):
                x = self.enc[f"{tag}_block{idx}"](x, emb)
                skips.append(x)

        out = None
        last = len(self.channel_mult) - 1
        for level in reversed(range(len(self.channel_mult))):
            res = self.img_resolution >> level
            tag = f"{res}x{res}"
            if level == last:
                x = self.dec[f"{tag}_in1"](self.dec[f"{tag}_in0"](x, emb), emb)
            else:
                x = self.dec[f"{tag}_up"](x, emb)
            for idx in range(self.num_blocks + 1):
                x = self.dec[f"{tag}_block{idx}"](torch.cat([x, skips.pop()], dim=1), emb)
            if self.decoder_type == "skip" or level == 0:
                if out is not None:
                    out = self.dec[f"{tag}_aux_up"](out)
                y = self.dec[f"{tag}_aux_conv"](silu(self.dec[f"{tag}_aux_norm"](x)))
                out = y if out is None else out + y
        return out
