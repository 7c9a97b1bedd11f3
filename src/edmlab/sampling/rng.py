"""Per-sample random streams: image k depends on seed k only, never on the batch it was drawn in
(as NVlabs/edm's generate.py does with one torch.Generator per seed)."""
from collections.abc import Sequence

import torch


class SeedStreams:
    """One ``torch.Generator`` per sample, seeded with ``seed mod 2³²``; draws are stacked along dim 0."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s % (1 << 32)) for s in self.seeds]

    def __len__(self):
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A ``[len(seeds), *shape]`` tensor of N(0, 1) draws, row k from stream k."""
        return torch.stack([torch.randn(tuple(shape), generator=g, dtype=dtype, device=self.device)
                            for g in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        self._check_batch(x)
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)

    def randint(self, high: int, shape: Sequence[int] = ()) -> torch.Tensor:
        return torch.stack([torch.randint(high, tuple(shape), generator=g, device=self.device)
                            for g in self.generators])

    def _check_batch(self, x):
        if x.shape[0] != len(self.generators):
            raise ValueError(f"batch of {x.shape[0]} samples but {len(self.generators)} seeds")


def noise_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """N(0, I) shaped like x from ``generator``: None (global RNG), a ``torch.Generator`` (one stream for the
    whole batch), a ``SeedStreams`` or a sequence of generators (one stream per sample)."""
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    if isinstance(generator, SeedStreams):
        return generator.randn_like(x)
    generators = list(generator)
    if len(generators) != x.shape[0]:
        raise ValueError(f"batch of {x.shape[0]} samples but {len(generators)} generators")
    return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device)
                        for g in generators]).to(x.device)
