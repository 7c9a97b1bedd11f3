"""An endless, exactly resumable stream of data-set indices, sharded across ranks.

The global stream is the concatenation of epochs 0, 1, 2, …; epoch ``e`` is a permutation of
``range(size)`` seeded by ``(seed, e)`` (the identity when ``shuffle=False``). Rank ``r`` of
``world_size`` takes global positions ``r, r + world_size, r + 2·world_size, …``, so the ranks
are disjoint and together cover every epoch. ``start`` skips the first ``start`` indices of
this rank's stream: a run resumed after ``k`` samples per rank passes ``start=k`` and sees
exactly the indices it would have seen had it never stopped.

NVlabs/edm's ``InfiniteSampler`` shuffles inside a sliding window and does not restore its
position on resume; this one uses whole-epoch permutations so that the position is one integer
(the pattern of EDM2's ``start_idx``).
"""
from collections.abc import Iterator

import numpy as np
import torch


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless index stream; see the module docstring. It has no ``__len__``."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, shuffle: bool = True):
        if int(size) < 1:
            raise ValueError(f"InfiniteSampler needs a non-empty data set, got size={size}")
        if int(world_size) < 1:
            raise ValueError(f"world_size must be >= 1, got world_size={world_size}")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got rank={rank}")
        if int(start) < 0:
            raise ValueError(f"start must be >= 0 (samples already consumed by this rank), got start={start}")
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got seed={seed}")
        self.size, self.seed, self.rank = int(size), int(seed), int(rank)
        self.world_size, self.start, self.shuffle = int(world_size), int(start), bool(shuffle)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of ``range(size)`` used in ``epoch`` (seeded by ``(seed, epoch)``)."""
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        position = self.rank + self.world_size * self.start
        epoch, order = -1, None
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = self.epoch_order(epoch)
            yield int(order[position % self.size])
            position += self.world_size
