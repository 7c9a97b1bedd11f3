"""The identity codec (``codec=pixels``): the network works on the images themselves, in [−1, 1] as edmlab's
image data sets give them (EDM2's ``StandardRGBEncoder``: x/127.5 − 1 in, (x·127.5 + 128) clipped to uint8 out)."""
import torch

from edmlab.codec import Codec, precision, signed_range
from edmlab.infra.images import to_uint8


class PixelCodec(Codec):
    """Moments = latents = images in [−1, 1]; ``sample`` draws nothing; ``decode`` is ``infra.images.to_uint8``;
    ``to_pixels`` and ``pixels`` give the samples back as they are (dtype and device too: today's pipeline)."""

    name = "pixels"

    def __init__(self, batch_size: int = 8, dtype: str = "float32"):
        self.batch_size, self.dtype = int(batch_size), precision(dtype)

    @staticmethod
    def latent_shape(shape) -> tuple:
        return tuple(int(s) for s in shape)

    def check_data(self, shape, where) -> None:
        if len(shape) == 3 and int(shape[0]) not in (1, 3):
            raise ValueError(f"{where} holds {int(shape[0])}-channel items, which look like the moments of a latent "
                             f"data set; train on them with codec=sd_vae codec.vae_path=DIR (or use an image set)")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return signed_range(images)

    def sample(self, moments: torch.Tensor, generator=None) -> torch.Tensor:
        return moments.to(torch.float32)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return to_uint8(latents)

    def to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def pixels(self, latents: torch.Tensor, device=None) -> torch.Tensor:
        return latents
