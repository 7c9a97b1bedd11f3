"""Conversions between the model's [−1, 1] images and 8-bit pictures, and sample grids."""
import math
from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → uint8 as NVlabs/edm writes PNGs: (x·127.5 + 128) clipped to [0, 255]."""
    return (images.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """A [N, C, H, W] batch in [−1, 1] as one uint8 H×W(×3) array, ``nrow`` images per row."""
    x = to_uint8(images).cpu()
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for k in range(n):
        r, col = divmod(k, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = x[k]
    grid = grid.permute(1, 2, 0).numpy()
    return grid[..., 0] if c == 1 else grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Write ``image_grid`` as a PNG, each pixel enlarged ``scale``× (nearest) so 8×8 digits are legible."""
    from PIL import Image

    grid = image_grid(images, nrow)
    picture = Image.fromarray(grid)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
