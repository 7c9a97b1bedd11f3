"""The data side of training: an endless, exactly resumable, rank-sharded loader over any data set
that yields ``(x, int label)`` and exposes ``shape`` and ``num_classes``.

Resume: the training loader starts this rank's ``InfiniteSampler`` after the samples the run has
already consumed, ``start = global_step · accumulate_grad_batches · batch_size`` (Lightning
restores ``global_step`` from the checkpoint before it calls ``train_dataloader()``), so a resumed
run sees the same batches, in the same order, as an uninterrupted one.

Multi-device: the sampler shards by ``trainer.global_rank``/``trainer.world_size`` itself, so the
Trainer must not inject its own ``DistributedSampler``: set ``trainer.use_distributed_sampler=false``.
"""
from collections.abc import Callable

import lightning as L
import torch

from edmlab.data.sampler import InfiniteSampler


def network_kwargs(shape) -> dict:
    """The denoiser network's keywords for samples of ``shape``: ``[C, H, W]`` images (or latents) or ``[D]`` points."""
    if len(shape) == 3:
        channels, resolution, _ = shape
        return dict(img_resolution=resolution, in_channels=channels, out_channels=channels)
    return dict(dim=shape[0])


class XFlipDataset(torch.utils.data.Dataset):
    """EDM's dataset-level ``--xflip``: items ``0..n−1`` as they are, items ``n..2n−1`` mirrored left–right."""

    def __init__(self, base: torch.utils.data.Dataset):
        self.base = base

    def __len__(self) -> int:
        return 2 * len(self.base)

    def __getitem__(self, index: int):
        n = len(self.base)
        if not -2 * n <= index < 2 * n:
            raise IndexError(f"index {index} out of range for an x-flipped data set of {2 * n} items")
        x, label = self.base[index % n]
        return (x.flip(-1) if index % (2 * n) >= n else x), label


class OneHotCollate:
    """Stack ``(x, int label)`` items into ``(x [N, ...] float32, one-hot float32 [N, label_dim])``;
    ``label_dim = 0`` gives the empty ``[N, 0]`` labels of unconditional training."""

    def __init__(self, label_dim: int):
        self.label_dim = int(label_dim)

    def __call__(self, items):
        x = torch.stack([item[0] for item in items]).to(torch.float32)
        if self.label_dim == 0:
            return x, torch.zeros(len(items), 0)
        labels = torch.stack([torch.as_tensor(item[1], dtype=torch.int64) for item in items])
        return x, torch.nn.functional.one_hot(labels, self.label_dim).to(torch.float32)


class EDMDataModule(L.LightningDataModule):
    """Training batches ``(x float32, class_labels float32 [N, label_dim])``.

    ``dataset``: a Dataset instance, or a zero-argument callable (a Hydra ``_partial_``) that builds one.
    ``batch_size``: per device. ``seed``: the data order (epoch e is a permutation seeded by (seed, e)).
    ``xflip``: double the set with left–right mirrors (images only). ``cond``: return one-hot class
    labels (the data set must have classes); otherwise the labels are ``[N, 0]``.
    """

    def __init__(self, dataset: torch.utils.data.Dataset | Callable[[], torch.utils.data.Dataset],
                 batch_size: int, seed: int = 0, num_workers: int = 0, xflip: bool = False, cond: bool = False):
        super().__init__()
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"data.batch_size is the per-device batch and must be an integer >= 1, got {batch_size!r}")
        if isinstance(num_workers, bool) or int(num_workers) != num_workers or num_workers < 0:
            raise ValueError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
        if int(seed) < 0:
            raise ValueError(f"data.seed must be a non-negative integer, got {seed!r}")
        self.batch_size, self.seed, self.num_workers = int(batch_size), int(seed), int(num_workers)
        self.xflip, self.cond = bool(xflip), bool(cond)
        self._source = dataset
        self._dataset = None
        self._train_set = None

    @property
    def dataset(self) -> torch.utils.data.Dataset:
        """The data set (built on first use when a callable was given)."""
        if self._dataset is None:
            dataset = self._source
            if not isinstance(dataset, torch.utils.data.Dataset) and callable(dataset):
                dataset = dataset()
            for attribute in ("shape", "num_classes", "__len__", "__getitem__"):
                if not hasattr(dataset, attribute):
                    raise ValueError(f"data.dataset {type(dataset).__name__} lacks '{attribute}'; EDMDataModule needs "
                                     f"a map-style Dataset with shape and num_classes (see edmlab.data)")
            if len(dataset) == 0:
                raise ValueError(f"data.dataset {type(dataset).__name__} is empty")
            if self.cond and dataset.num_classes < 1:
                raise ValueError(f"data.cond=true but data set {type(dataset).__name__} has no class labels; "
                                 f"set data.cond=false or give it labels (dataset.json for image folders)")
            if self.xflip and len(dataset.shape) != 3:
                raise ValueError(f"data.xflip=true mirrors images, but the data set has shape {tuple(dataset.shape)}; "
                                 f"set data.xflip=false")
            self._dataset = dataset
        return self._dataset

    @property
    def train_set(self) -> torch.utils.data.Dataset:
        """The training items: the data set, doubled by x-flips when ``xflip``."""
        if self._train_set is None:
            self._train_set = XFlipDataset(self.dataset) if self.xflip else self.dataset
        return self._train_set

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dataset.shape)

    @property
    def label_dim(self) -> int:
        return int(self.dataset.num_classes) if self.cond else 0

    @property
    def network_kwargs(self) -> dict:
        """Constructor arguments for the denoiser network that depend on the data."""
        return network_kwargs(self.shape)

    def sampler(self, rank: int = 0, world_size: int = 1, start: int = 0) -> InfiniteSampler:
        return InfiniteSampler(len(self.train_set), seed=self.seed, rank=rank, world_size=world_size, start=start)

    def _position(self) -> tuple[int, int, int]:
        """``(rank, world_size, start)`` from the attached trainer (``(0, 1, 0)`` without one)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 0
        start = trainer.global_step * trainer.accumulate_grad_batches * self.batch_size
        return trainer.global_rank, trainer.world_size, start

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        rank, world_size, start = self._position()
        if world_size > 1 and getattr(getattr(self.trainer, "_accelerator_connector", None),
                                      "use_distributed_sampler", False):
            raise ValueError("EDMDataModule shards the data across ranks itself: "
                             "set trainer.use_distributed_sampler=false")
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=self.sampler(rank, world_size, start),
            num_workers=self.num_workers, collate_fn=OneHotCollate(self.label_dim),
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
            prefetch_factor=2 if self.num_workers > 0 else None)

    def held_out_set(self) -> torch.utils.data.Dataset | None:
        """The data set's held-out split (digits: the 297 "test" images), or None if it has none."""
        held_out = getattr(self.dataset, "held_out", None)
        return held_out() if callable(held_out) else None

    def val_images(self, n: int | None = None) -> torch.Tensor:
        """``n`` real reference items ``[n, *shape]`` float32 (all when None): the first ``n`` of the held-out
        split, or, for a data set without one, ``n`` training items in a fixed seeded order."""
        source = self.held_out_set()
        if source is None:
            source = self.dataset
            order = torch.randperm(len(source), generator=torch.Generator().manual_seed(self.seed))
        else:
            order = torch.arange(len(source))
        n = len(source) if n is None else int(n)
        if not 1 <= n <= len(source):
            raise ValueError(f"val_images: n must lie in [1, {len(source)}] (the size of the reference set), got n={n}")
        return torch.stack([source[int(i)][0] for i in order[:n]]).to(torch.float32)
