"""Low-dimensional points drawn from a Gaussian mixture: a data set that trains in seconds and
whose exact denoiser is known (``edmlab.data.mixture.GaussianMixture``).

Items are ``(x float32 [D], component index int64)``; the component index is the class label,
so class-conditional training works. The points are drawn once, at construction, from a
generator seeded by ``(seed, split)``, so the set is fixed and the held-out set is disjoint.

Presets (means ``[K, D]``, per-component std, uniform weights):
- ``ring8``: 8 modes evenly spaced on the unit circle, μ_k = (cos 2πk/8, sin 2πk/8), std 0.1;
  per-coordinate data std √(1/2 + 0.1²) ≈ 0.714.
- ``mixture16``: the few-step sampler bench (``benchmarks/fewstep_accuracy.py``): 8 modes in 16-D, means
  μ_k ~ N(0, 0.7² I), per-coordinate stds uniform in [0.3, 0.6], weights ∝ U[0.5, 1.5] (all drawn once from seed
  16); per-coordinate data std ≈ 0.80. Smooth enough that EDM's Heun-35 flips the mode of none of 512 latents
  relative to the exact ODE (10-NFE iPNDM: 2%), so the median endpoint error measures the solver, not flips.
"""
import math

import numpy as np
import torch


def ring(modes: int = 8, radius: float = 1.0) -> torch.Tensor:
    """Means ``[modes, 2]`` evenly spaced on a circle, the first at angle 0."""
    angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return radius * torch.stack([angle.cos(), angle.sin()], dim=1)


def random_mixture(modes: int, dim: int, mean_std: float, std_range: tuple[float, float], seed: int) -> dict:
    """Means ~ N(0, mean_std² I) ``[modes, dim]``, stds ~ U(std_range) ``[modes, dim]``, weights ~ U[0.5, 1.5]."""
    generator = torch.Generator().manual_seed(seed)
    means = mean_std * torch.randn(modes, dim, generator=generator, dtype=torch.float64)
    lo, hi = std_range
    stds = lo + (hi - lo) * torch.rand(modes, dim, generator=generator, dtype=torch.float64)
    weights = 0.5 + torch.rand(modes, generator=generator, dtype=torch.float64)
    return dict(means=means, stds=stds, weights=weights)


PRESETS = {
    "ring8": lambda: dict(means=ring(8, 1.0), stds=0.1, weights=None),  # 8 modes on the unit circle, std 0.1
    "bimodal1d": lambda: dict(means=[[-1.0], [1.0]], stds=0.25, weights=None),  # two 1-D modes at ±1, std 0.25
    "mixture16": lambda: random_mixture(8, 16, 0.7, (0.3, 0.6), seed=16),  # the 16-D few-step bench
}


def make_mixture(preset: str | None = "ring8", means=None, stds=None, weights=None):
    """A ``GaussianMixture`` from explicit ``means``/``stds``/``weights`` or else a named preset."""
    from edmlab.data.mixture import GaussianMixture

    if means is None:
        if preset not in PRESETS:
            raise ValueError(f"Unknown points preset {preset!r}; choose one of {sorted(PRESETS)} "
                             f"or give means and stds")
        return GaussianMixture(**PRESETS[preset]())
    if stds is None:
        raise ValueError("points data set: means were given without stds; "
                         "set data.dataset.stds (scalar, [K] or [K, D])")
    return GaussianMixture(means, stds, weights)


class PointsDataset(torch.utils.data.Dataset):
    """``n`` points of a Gaussian mixture (``preset`` or explicit ``means``/``stds``/``weights``)."""

    SPLITS = ("train", "test")

    def __init__(self, n: int = 8192, preset: str | None = "ring8", means=None, stds=None, weights=None,
                 seed: int = 0, split: str = "train"):
        if int(n) < 1:
            raise ValueError(f"points data set size must be >= 1, got n={n}")
        if split not in self.SPLITS:
            raise ValueError(f"points split must be one of {self.SPLITS}, got {split!r}")
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got seed={seed}")
        self.n, self.seed, self.split = int(n), int(seed), split
        self._spec = dict(preset=preset, means=means, stds=stds, weights=weights)
        self.mixture = make_mixture(**self._spec)
        stream = np.random.SeedSequence([self.seed, self.SPLITS.index(split)]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(stream))
        points, components = self.mixture.sample(self.n, generator=generator, return_components=True)
        self.points = points.to(torch.float32)
        self.labels = components.to(torch.int64)
        self.shape = (self.mixture.dim,)
        self.num_classes = self.mixture.num_components

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.points[index], self.labels[index]

    def held_out(self) -> "PointsDataset":
        """As many fresh points of the same mixture, from the independent ``"test"`` stream."""
        return PointsDataset(self.n, seed=self.seed, split="test", **self._spec)
