"""Stability's VAE as EDM2 uses it (``codec=sd_vae``): diffusers' ``AutoencoderKL`` read from a local folder, pixels
in [0, 1] (not the [−1, 1] Stable Diffusion was trained with), moments = posterior (mean, std), and EDM2's fixed
per-channel normalisation of the latents instead of diffusers' ``scaling_factor``:

    scale = final_std / raw_std,  bias = final_mean − raw_mean·scale   (float32, as NVlabs/edm2 computes them)
    latents = (mean + ε·std)·scale + bias,  decode: VAE((latents − bias)/scale) clamped to [0, 1], ·255 → uint8

The defaults are EDM2's for stabilityai/sd-vae-ft-mse (raw_mean [5.81, 3.25, 0.12, −2.15], raw_std
[4.17, 4.62, 3.71, 3.28], final mean 0 and std 0.5 = σ_data). Only ``config.json`` and
``diffusion_pytorch_model.safetensors`` are read (never a pickled ``.bin``), with no network access.
"""
import json
import os
from pathlib import Path

import numpy as np
import torch

from edmlab.codec import Codec, gaussian, precision, unit_range

CONFIG, WEIGHTS = "config.json", "diffusion_pytorch_model.safetensors"
RAW_MEAN, RAW_STD = (5.81, 3.25, 0.12, -2.15), (4.17, 4.62, 3.71, 3.28)
ENCODE_HINT = "python -m edmlab.cli.encode <images folder|zip> <dest> --vae-path DIR"


def normalisation(raw_mean, raw_std, final_mean=0.0, final_std=0.5) -> tuple[np.ndarray, np.ndarray]:
    """(scale, bias) per channel, float32: scale = final_std/raw_std, bias = final_mean − raw_mean·scale."""
    scale = np.float32(final_std) / np.asarray(raw_std, dtype=np.float32)
    bias = np.float32(final_mean) - np.asarray(raw_mean, dtype=np.float32) * scale
    return scale.astype(np.float32), bias.astype(np.float32)


def read_vae_config(vae_path, latent_channels: int | None = None) -> dict:
    """The ``config.json`` of the VAE folder ``vae_path``, checked: an AutoencoderKL from RGB to RGB (with
    ``latent_channels`` latent channels when given) whose weights are in ``diffusion_pytorch_model.safetensors``."""
    expected = (f"a local folder with {CONFIG} + {WEIGHTS} (AutoencoderKL.save_pretrained, e.g. "
                f"stabilityai/sd-vae-ft-mse)")
    if vae_path is None or str(vae_path) in ("", "???"):
        raise ValueError(f"codec=sd_vae needs codec.vae_path: {expected}; edmlab downloads nothing")
    folder = Path(os.path.expanduser(str(vae_path)))
    if not folder.is_dir():
        raise FileNotFoundError(f"codec.vae_path={folder} is not a folder; expected {expected}")
    missing = [name for name in (CONFIG, WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"codec.vae_path={folder} lacks {' and '.join(missing)}; expected {expected}")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{folder / CONFIG} is not JSON ({e}); expected the config.json of {expected}") from None
    if not isinstance(config, dict) or config.get("_class_name") != "AutoencoderKL":
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{folder / CONFIG} describes a {found!r}, not an AutoencoderKL; expected {expected}")
    channels = (config.get("in_channels", 3), config.get("out_channels", 3))
    if channels != (3, 3):
        raise ValueError(f"{folder / CONFIG}: in/out_channels={channels}; codec=sd_vae expects an RGB VAE (3, 3)")
    found = config.get("latent_channels", 4)
    if latent_channels is not None and found != latent_channels:
        raise ValueError(f"{folder / CONFIG}: latent_channels={found}, but codec.raw_mean/raw_std have "
                         f"{latent_channels} entries; use a {latent_channels}-channel VAE or set the statistics of "
                         f"this one")
    return config


class SDVAECodec(Codec):
    """``codec=sd_vae``; see the module docstring. The VAE is loaded on first use (``vae``) and follows the device
    of its inputs; ``dtype`` is the precision it runs in (moments and latents are float32 either way)."""

    name = "sd_vae"

    def __init__(self, vae_path=None, raw_mean=RAW_MEAN, raw_std=RAW_STD, final_mean: float = 0.0,
                 final_std: float = 0.5, batch_size: int = 8, dtype: str = "float32"):
        if len(raw_mean) != len(raw_std):
            raise ValueError(f"codec.raw_mean has {len(raw_mean)} entries but codec.raw_std {len(raw_std)}; give "
                             f"one per latent channel")
        if int(batch_size) < 1:
            raise ValueError(f"codec.batch_size must be >= 1, got {batch_size}")
        self.channels = len(raw_mean)
        self.config = read_vae_config(vae_path, self.channels)
        self.vae_path = Path(os.path.expanduser(str(vae_path)))
        self.factor = 2 ** (len(self.config.get("block_out_channels", (64,))) - 1)
        self.raw_mean, self.raw_std = [float(v) for v in raw_mean], [float(v) for v in raw_std]
        self.final_mean, self.final_std = float(final_mean), float(final_std)
        self.scale, self.bias = normalisation(raw_mean, raw_std, final_mean, final_std)
        self.batch_size, self.dtype = int(batch_size), precision(dtype)
        self._vae = None

    @property
    def vae(self):
        """diffusers' AutoencoderKL of ``vae_path``, in eval mode without gradients."""
        return self.load()._vae

    def _on(self, device: torch.device):
        vae = self.vae
        if next(vae.parameters()).device != device:
            vae.to(device)
        return vae

    def _affine(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        return (torch.as_tensor(self.scale, device=like.device).reshape(shape),
                torch.as_tensor(self.bias, device=like.device).reshape(shape))

    @staticmethod
    def latent_shape(shape) -> tuple:
        """The network's ``[L, H, W]`` for data items ``[2L, H, W]`` (moments)."""
        channels, *size = (int(s) for s in shape)
        return (channels // 2, *size)

    def moments_shape(self, image_shape) -> tuple:
        """The moments ``[2L, H/f, W/f]`` of RGB images ``[3, H, W]`` (f = 2^(len(block_out_channels) − 1))."""
        _, *size = (int(s) for s in image_shape)
        return (2 * self.channels, *(s // self.factor for s in size))

    def check_data(self, shape, where) -> None:
        """Refuse a data set whose items are not this codec's ``[2L, H, W]`` moments, in one line naming ``where``."""
        channels = int(shape[0])
        if channels in (1, 3):
            raise ValueError(f"{where} holds {channels}-channel images, which were never encoded; codec=sd_vae trains "
                             f"on the {2 * self.channels}-channel moments of a latent data set: run {ENCODE_HINT} "
                             f"and use data=latents data.dataset.path=<dest>")
        if channels != 2 * self.channels:
            raise ValueError(f"{where} holds {channels}-channel latents; codec=sd_vae with {self.channels} latent "
                             f"channels expects {2 * self.channels} (mean and std per channel)")

    def check_latents(self, shape, where) -> None:
        """Refuse a network whose samples are not ``[L, H, W]`` latents of this codec, naming ``where``."""
        if len(shape) != 3 or int(shape[0]) != self.channels:
            raise ValueError(f"{where} makes samples of shape {list(shape)}, but codec=sd_vae decodes "
                             f"{self.channels}-channel latents [{self.channels}, H, W] (codec.raw_mean/raw_std)")

    def load(self) -> "SDVAECodec":
        """Load the VAE now (once): weights that do not load fail here, before anything is sampled."""
        if self._vae is None:
            self._vae = load_vae(self.vae_path, self.dtype)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior (mean, std) of the images, ``[N, 2L, H/f, W/f]`` float32 (EDM2 ``encode_pixels``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"codec=sd_vae encodes RGB images [N, 3, H, W], got shape {tuple(images.shape)}")
        x = unit_range(images)
        vae = self._on(x.device)
        moments = []
        for chunk in x.split(self.batch_size):
            posterior = vae.encode(chunk.to(self.dtype)).latent_dist
            moments.append(torch.cat([posterior.mean, posterior.std], dim=1).to(torch.float32))
        return torch.cat(moments)

    def sample(self, moments: torch.Tensor, generator=None) -> torch.Tensor:
        """Normalised latents (mean + ε·std)·scale + bias, float32 (EDM2 ``encode_latents``)."""
        if moments.ndim != 4 or moments.shape[1] != 2 * self.channels:
            raise ValueError(f"codec=sd_vae samples from moments [N, {2 * self.channels}, H, W], got shape "
                             f"{tuple(moments.shape)}")
        mean, std = moments.to(torch.float32).chunk(2, dim=1)
        scale, bias = self._affine(mean)
        return (mean + gaussian(mean, generator) * std) * scale + bias

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``[N, 3, f·H, f·W]``: the VAE's output of (latents − bias)/scale, clamped to [0, 1] and
        ·255 truncated, as EDM2's ``decode``."""
        if latents.ndim != 4 or latents.shape[1] != self.channels:
            raise ValueError(f"codec=sd_vae decodes latents [N, {self.channels}, H, W], got shape "
                             f"{tuple(latents.shape)}")
        x = latents.to(torch.float32)
        scale, bias = self._affine(x)
        x = (x - bias) / scale
        vae = self._on(x.device)
        images = [vae.decode(chunk.to(self.dtype)).sample.to(torch.float32) for chunk in x.split(self.batch_size)]
        return torch.cat(images).clamp(0, 1).mul(255).to(torch.uint8)

    def settings(self) -> dict:
        """The ``codec`` config group of this codec."""
        return dict(name=self.name, vae_path=str(self.vae_path), raw_mean=self.raw_mean, raw_std=self.raw_std,
                    final_mean=self.final_mean, final_std=self.final_std, batch_size=self.batch_size,
                    dtype=str(self.dtype).removeprefix("torch."))


def load_vae(vae_path, dtype: torch.dtype = torch.float32):
    """diffusers' ``AutoencoderKL.from_pretrained`` of a checked local folder: safetensors only, no network."""
    read_vae_config(vae_path)
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ValueError(f"codec=sd_vae needs diffusers (pip install diffusers): {e}") from None
    folder = Path(os.path.expanduser(str(vae_path)))
    try:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                            low_cpu_mem_usage=False, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise ValueError(f"{folder / WEIGHTS} does not load as the AutoencoderKL of {folder / CONFIG} "
                         f"({type(e).__name__}: {reason})") from None
    return vae.eval().requires_grad_(False)
