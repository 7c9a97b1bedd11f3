"""EDM's non-leaking geometric augmentation (NVlabs/edm ``training/augment.py``, paper App. F.2).

Each augmentation is applied to each image independently with probability ``multiplier·p``
(a multiplier of 1e8 makes it active for every image whenever p > 0). The draws, in order:

=================  =====================================================  ====================
augmentation       parameter (per image)                                  label columns
=================  =====================================================  ====================
x-flip             w ∈ {0, 1} fair coin                                   0: w
y-flip             w ∈ {0, 1} fair coin                                   1: w
isotropic scale    w ~ N(0, 1), factor s = 2^(scale_std·w)                2: w
rotation           θ ~ U(−π·rotate_frac_max, π·rotate_frac_max)           3, 4: cos θ − 1, sin θ
anisotropic scale  w ~ N(0, 1), s = 2^(aniso_std·w) along the axis at     5, 6: w·cos r, w·sin r
                   angle r ~ U(−π, π) (r = 0 with prob 1 − aniso_rotate_prob)
translation        (wx, wy) ~ N(0, I), shift (wx·W, wy·H)·translate_frac_std  7, 8: wx, wy
=================  =====================================================  ====================

An augmentation that is not applied has w = θ = 0, so the identity has the all-zero label
vector. The denoiser gets the label vector through its ``augment_labels`` input; sampling passes
zeros (or ``None``), i.e. "no augmentation", so the augmentations do not leak into the samples.

Geometry, in pixel coordinates centred on the image (x right, y down): the output pixel at p
takes the input value at ``G⁻¹·p`` with

    G⁻¹ = diag(1/s, 1/s) · R(θ) · R(−r)·diag(1/s_a, s_a)·R(r) · T(−t),
    R(φ) = [[cos φ, −sin φ], [sin φ, cos φ]],

so the content is scaled by s, turned by θ (counter-clockwise on screen), stretched by s_a along
the axis r and shifted by t; θ = π/2 equals ``torch.rot90(images, 1, dims=(2, 3))``. The image is
reflect-padded by the largest margin that ``G⁻¹`` reaches (at most size − 1; beyond it zeros),
then resampled bilinearly with ``affine_grid``/``grid_sample`` directly onto the output window,
which is the crop. Images whose geometric parameters are all zero are passed through untouched.

Differences from NVlabs/edm, on purpose:
- no 2× up-/down-sampling with the ``sym6`` wavelet around the resampling (plain bilinear);
- only the geometric augmentations that EDM's ``train.py`` enables (no integer rotation or
  translation, no colour transforms);
- the label always has all 9 columns (zeros for a disabled augmentation); NVlabs leaves the
  columns of disabled augmentations out, which gives the same 9 columns with EDM's settings.
Like NVlabs, the aniso label does not pin down the transform: (w, r) and (−w, r + π) give the same
label but stretch along the same axis by s_a and 1/s_a.
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

AUGMENT_DIM = 9


@dataclass
class AugmentParams:
    """Per-image parameters, each a float64 tensor ``[N]`` (names as in the module table)."""

    xflip: torch.Tensor
    yflip: torch.Tensor
    scale: torch.Tensor
    rotate: torch.Tensor
    aniso: torch.Tensor
    aniso_axis: torch.Tensor
    translate_x: torch.Tensor
    translate_y: torch.Tensor

    @classmethod
    def identity(cls, n: int, device=None) -> "AugmentParams":
        return cls(*(torch.zeros(n, dtype=torch.float64, device=device) for _ in fields(cls)))

    def to(self, device) -> "AugmentParams":
        return AugmentParams(*(getattr(self, f.name).to(device) for f in fields(self)))

    @property
    def labels(self) -> torch.Tensor:
        """The 9-dim augmentation labels ``[N, 9]`` float32, zero for the identity."""
        columns = [self.xflip, self.yflip, self.scale, self.rotate.cos() - 1, self.rotate.sin(),
                   self.aniso * self.aniso_axis.cos(), self.aniso * self.aniso_axis.sin(),
                   self.translate_x, self.translate_y]
        return torch.stack(columns, dim=1).to(torch.float32)

    @property
    def moves(self) -> torch.Tensor:
        """``[N]`` bool: which images need resampling (any geometric parameter non-zero)."""
        geometric = (self.scale, self.rotate, self.aniso, self.translate_x, self.translate_y)
        return torch.stack([g != 0 for g in geometric]).any(0)


def _affine(a, b, c, d, e, f) -> torch.Tensor:
    """Batch of 3×3 matrices ``[[a, b, c], [d, e, f], [0, 0, 1]]`` from ``[N]`` tensors."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, c, d, e, f, zero, zero, one], dim=1).reshape(-1, 3, 3)


def _rotation(phi: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(phi)
    return _affine(phi.cos(), -phi.sin(), zero, phi.sin(), phi.cos(), zero)


def _scaling(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(sx)
    return _affine(sx, zero, zero, zero, sy, zero)


def _translation(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    zero, one = torch.zeros_like(tx), torch.ones_like(tx)
    return _affine(one, zero, tx, zero, one, ty)


class AugmentPipe:
    """EDM's augmentation pipe; see the module docstring for the transforms and the label layout.

    ``p`` ∈ [0, 1] is the overall probability; ``xflip, yflip, scale, rotate_frac, aniso,
    translate_frac`` are per-augmentation probability multipliers (0 disables one); the ``*_std``
    values are in log2 units (scale, aniso) or fractions of the image size (translation).
    NVlabs/edm ``train.py`` uses ``p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
    translate_frac=1`` with the default spreads below.
    """

    augment_dim = AUGMENT_DIM

    def __init__(self, p: float = 1.0, xflip: float = 0, yflip: float = 0, scale: float = 0,
                 rotate_frac: float = 0, aniso: float = 0, translate_frac: float = 0,
                 scale_std: float = 0.2, rotate_frac_max: float = 1, aniso_std: float = 0.2,
                 aniso_rotate_prob: float = 0.5, translate_frac_std: float = 0.125):
        settings = dict(p=p, xflip=xflip, yflip=yflip, scale=scale, rotate_frac=rotate_frac, aniso=aniso,
                        translate_frac=translate_frac, scale_std=scale_std, rotate_frac_max=rotate_frac_max,
                        aniso_std=aniso_std, aniso_rotate_prob=aniso_rotate_prob,
                        translate_frac_std=translate_frac_std)
        for name, value in settings.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"AugmentPipe: {name} must be a number, got {value!r}") from None
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"AugmentPipe: {name} must be finite and >= 0, got {name}={value}")
            setattr(self, name, value)
        for name in ("p", "aniso_rotate_prob"):
            if getattr(self, name) > 1:
                raise ValueError(f"AugmentPipe: {name} is a probability in [0, 1], got {name}={getattr(self, name)} "
                                 f"(per-augmentation strengths go in the multipliers xflip, yflip, scale, ...)")

    def __repr__(self) -> str:
        names = ("p", "xflip", "yflip", "scale", "rotate_frac", "aniso", "translate_frac")
        return "AugmentPipe(" + ", ".join(f"{n}={getattr(self, n):g}" for n in names) + ")"

    def draw(self, n: int, generator: torch.Generator | None = None, device=None) -> AugmentParams:
        """Draw the parameters of ``n`` images (on ``generator``'s device when one is given)."""
        device = generator.device if generator is not None else device
        options = dict(generator=generator, device=device, dtype=torch.float64)
        params = AugmentParams.identity(n, device)

        def gated(multiplier, values):
            return torch.where(torch.rand(n, **options) < multiplier * self.p, values, torch.zeros_like(values))

        if self.xflip > 0:
            params.xflip = gated(self.xflip, torch.randint(2, (n,), **options))
        if self.yflip > 0:
            params.yflip = gated(self.yflip, torch.randint(2, (n,), **options))
        if self.scale > 0:
            params.scale = gated(self.scale, torch.randn(n, **options))
        if self.rotate_frac > 0:
            params.rotate = gated(self.rotate_frac, (torch.rand(n, **options) * 2 - 1) * math.pi * self.rotate_frac_max)
        if self.aniso > 0:
            params.aniso = gated(self.aniso, torch.randn(n, **options))
            axis = (torch.rand(n, **options) * 2 - 1) * math.pi
            rotated = torch.rand(n, **options) < self.aniso_rotate_prob
            params.aniso_axis = torch.where(rotated, axis, torch.zeros_like(axis))
        if self.translate_frac > 0:
            shift = torch.randn(2, n, **options)
            shift = torch.where(torch.rand(n, **options) < self.translate_frac * self.p, shift, torch.zeros_like(shift))
            params.translate_x, params.translate_y = shift[0], shift[1]
        return params

    def inverse_matrices(self, params: AugmentParams, height: int, width: int) -> torch.Tensor:
        """``G⁻¹`` ``[N, 3, 3]`` float64, mapping centred output pixel coordinates to input ones."""
        s = torch.exp2(params.scale * self.scale_std)
        s_a = torch.exp2(params.aniso * self.aniso_std)
        r = params.aniso_axis
        shift_x = params.translate_x * (width * self.translate_frac_std)
        shift_y = params.translate_y * (height * self.translate_frac_std)
        return (_scaling(1 / s, 1 / s) @ _rotation(params.rotate)
                @ _rotation(-r) @ _scaling(1 / s_a, s_a) @ _rotation(r)
                @ _translation(-shift_x, -shift_y))

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply the flips, then the geometric transform, of ``params`` to ``images`` ``[N, C, H, W]``."""
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"AugmentPipe expects float images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        n, _, height, width = images.shape
        params = params.to(images.device)
        if params.xflip.shape != (n,):
            raise ValueError(f"AugmentPipe: parameters for {params.xflip.shape[0]} images, batch has {n}")
        images = torch.where(params.xflip.view(n, 1, 1, 1) == 1, images.flip(3), images)
        images = torch.where(params.yflip.view(n, 1, 1, 1) == 1, images.flip(2), images)
        moves = params.moves
        if moves.any():
            inverse = self.inverse_matrices(params, height, width)[moves]
            images = images.clone()
            images[moves] = _resample(images[moves], inverse)
        return images

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Augment a batch: returns ``(augmented images, augment_labels [N, 9] float32)``."""
        params = self.draw(images.shape[0], generator=generator, device=images.device)
        return self.apply(images, params), params.labels.to(images.device)


def _resample(images: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Reflect-pad, then sample ``images`` bilinearly at ``inverse @ p`` for every output pixel p."""
    _, _, height, width = images.shape
    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = torch.tensor([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1.0, 1, 1, 1]],
                           dtype=inverse.dtype, device=inverse.device)
    reach = (inverse @ corners)[:, :2].abs().amax(dim=(0, 2))
    pad_x = min(max(math.ceil(reach[0].item() - cx), 0), width - 1)
    pad_y = min(max(math.ceil(reach[1].item() - cy), 0), height - 1)
    padded = F.pad(images, [pad_x, pad_x, pad_y, pad_y], mode="reflect")
    to_input = torch.diag(torch.tensor([2 / (width + 2 * pad_x), 2 / (height + 2 * pad_y), 1.0], dtype=inverse.dtype))
    from_output = torch.diag(torch.tensor([width / 2, height / 2, 1.0], dtype=inverse.dtype))
    theta = to_input.to(inverse.device) @ inverse @ from_output.to(inverse.device)
    grid = F.affine_grid(theta[:, :2].to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
