"""Codecs: between the pixels a user sees and the space a network is trained and sampled in (EDM2's
``training/encoders.py`` split, in edmlab's terms).

    images ──encode──▶ moments (what a data set stores) ──sample──▶ latents (the network's x) ──decode──▶ uint8

- ``encode(images)``: uint8 ``[N, C, H, W]`` (0…255) or float in [−1, 1] → the moments, float32. For the VAE they are
  the posterior mean and std, concatenated on the channel axis (2·L channels); for pixels the images in [−1, 1].
- ``sample(moments, generator)``: latents drawn from the moments (z = mean + ε·std, ε from ``generator``) and
  normalised per channel, z·scale + bias with scale = final_std/raw_std, bias = final_mean − raw_mean·scale.
- ``decode(latents)``: uint8 images ``[N, 3, H', W']``; ``to_pixels(latents)`` the same levels as float32
  u8/127.5 − 1, so that edmlab's pixel pipeline (``infra.images.to_uint8``, grids, FID, FD-DINOv2) gets exactly
  these uint8 images back; ``pixels(latents, device)`` the same, ``batch_size`` at a time on ``device``, on the CPU
  (what training's previews and evaluation's metrics, grids and files are made from).

Every method works in batches of ``batch_size`` on the device of its input, in the codec's ``dtype``, and returns
float32 (uint8 for ``decode``). ``latent_shape(shape)`` is the network's ``[C, H, W]`` for a data set's item shape
(a static method: :func:`codec_class` gives it without the VAE folder). ``codec=pixels`` is the identity throughout:
its ``to_pixels`` and ``pixels`` return the samples as they are.
"""
import torch

PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def precision(name) -> torch.dtype:
    """The torch dtype of a ``codec.dtype`` setting (float32, float16 or bfloat16)."""
    if isinstance(name, torch.dtype) and name in PRECISIONS.values():
        return name
    if name not in PRECISIONS:
        raise ValueError(f"codec.dtype={name!r} is not one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [0, 1]: uint8 u → u/255, a float image x in [−1, 1] → (x + 1)/2 (EDM2 feeds its VAE
    [0, 1] pixels, ``encoders.py`` ``encode_pixels``)."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 (0…255) or float in [−1, 1], got dtype {images.dtype}")
    return (images.to(torch.float32) + 1) / 2


def signed_range(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [−1, 1]: uint8 u → u/127.5 − 1, a float image as it is."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 127.5 - 1
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 (0…255) or float in [−1, 1], got dtype {images.dtype}")
    return images.to(torch.float32)


def gaussian(like: torch.Tensor, generator=None) -> torch.Tensor:
    """ε ~ N(0, I) shaped like ``like``, filled in its memory order as ``randn_like`` does (a channels-last VAE
    output gets the draws of EDM2's ``randn_like``): from a ``torch.Generator``, from an object with
    ``randn(shape)`` (edmlab's per-seed streams draw ``[N, *shape]``, one stream per row), or from torch's global
    generator (None)."""
    if generator is None:
        return torch.randn_like(like)
    if isinstance(generator, torch.Generator):
        return torch.empty_like(like, device=generator.device).normal_(generator=generator).to(like.device)
    return generator.randn(list(like.shape[1:])).to(like.device, like.dtype)


class Codec:
    """The interface (see the module docstring); :class:`PixelCodec` and :class:`SDVAECodec` implement it."""

    name = "codec"
    batch_size = 8

    @staticmethod
    def latent_shape(shape) -> tuple:
        raise NotImplementedError

    def check_data(self, shape, where) -> None:
        """Refuse, in one line naming ``where``, a data set whose item shape this codec cannot train on."""

    def check_latents(self, shape, where) -> None:
        """Refuse, in one line naming ``where``, a network whose samples ``[C, H, W]`` this codec cannot decode."""

    def load(self) -> "Codec":
        """Read now what decoding needs (a VAE's weights), so that a bad file fails before sampling; ``self``."""
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, moments: torch.Tensor, generator=None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """``decode`` as float32 u8/127.5 − 1, the [−1, 1] images of edmlab's pixel pipeline."""
        return self.decode(latents).to(torch.float32) / 127.5 - 1

    def pixels(self, latents: torch.Tensor, device=None) -> torch.Tensor:
        """``to_pixels`` of ``latents`` (anywhere), ``batch_size`` at a time on ``device`` (None: where they are),
        float32 on the CPU: decoded images never pile up on an accelerator."""
        device = latents.device if device is None else torch.device(device)
        if not len(latents):
            return self.to_pixels(latents.to(device)).cpu()
        return torch.cat([self.to_pixels(chunk.to(device)).cpu() for chunk in latents.split(self.batch_size)])

    def encode_latents(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        """``sample(encode(images))``: the network's x for ``images``."""
        return self.sample(self.encode(images), generator)


CODECS = ("pixels", "sd_vae")


def codec_class(spec: dict | None = None) -> type:
    """The class of a ``codec`` config group (``spec["name"]``; None: pixels), without building it."""
    name = dict(spec or {}).get("name", "pixels")
    if name == "pixels":
        from edmlab.codec.pixels import PixelCodec

        return PixelCodec
    if name == "sd_vae":
        from edmlab.codec.sd_vae import SDVAECodec

        return SDVAECodec
    raise ValueError(f"codec={name!r} is not one of {', '.join(CODECS)}")


def build_codec(spec: dict | None = None) -> Codec:
    """The codec of a ``codec`` config group: ``{"name": "pixels"}`` or ``{"name": "sd_vae", "vae_path": …, …}``
    (a ``_target_`` key is ignored; None: pixels). ``codec=pixels`` takes ``vae_path`` only as null (conf/codec's
    pixels.yaml has the key so that evaluation's ``codec.vae_path=DIR`` needs no ``+``)."""
    settings = {k: v for k, v in dict(spec or {}).items() if k not in ("_target_", "name")}
    cls = codec_class(spec)
    if cls.name == "pixels" and "vae_path" in settings:
        vae_path = settings.pop("vae_path")
        if vae_path is not None:
            raise ValueError(f"codec.vae_path={vae_path} is set but codec=pixels decodes nothing; add codec=sd_vae to "
                             f"train in the VAE's latent space (or drop codec.vae_path)")
    return cls(**settings)


__all__ = ["CODECS", "Codec", "PRECISIONS", "build_codec", "codec_class", "gaussian", "precision", "signed_range",
           "unit_range"]
