"""Conversions between the model's [−1, 1] images and 8-bit pictures, and sample grids (torchvision's make_grid)."""
import math
from pathlib import Path

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → uint8 as NVlabs/edm writes PNGs: (x·127.5 + 128) clipped to [0, 255]."""
    return (images.detach().to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """A [N, C, H, W] batch in [−1, 1] as one PNG, ``nrow`` images per row (default ⌈√N⌉) on a white 1-pixel
    border, each pixel enlarged ``scale``× (nearest) so 8×8 digits are legible."""
    from torchvision.io import write_png
    from torchvision.utils import make_grid

    x = to_uint8(images).cpu()
    grid = make_grid(x, nrow=nrow or math.ceil(math.sqrt(len(x))), padding=1, pad_value=255)
    grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(grid[:1] if x.shape[1] == 1 else grid, str(path))
    return path
