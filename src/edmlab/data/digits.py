"""scikit-learn's bundled 8×8 handwritten digits: the embedded default data set (no download).

1,797 real images, one channel, integer intensities 0–16, mapped to [−1, 1] by x/8 − 1.
A fixed held-out split (``HELD_OUT`` images chosen by a seeded permutation) is the reference
of the digits metrics (``edmlab.evaluation.metrics.digits``).
"""
import numpy as np
import torch

HELD_OUT = 297
SPLIT_SEED = 0


def digits_arrays(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 1, 8, 8]`` float32 in [−1, 1] and int64 labels of one split.

    ``split``: ``"train"`` (1,500 images), ``"test"`` (the 297 held out) or ``"all"``.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    if split == "all":
        return images, labels
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(labels)))
    index = order[HELD_OUT:] if split == "train" else order[:HELD_OUT]
    return images[index], labels[index]


class DigitsDataset(torch.utils.data.Dataset):
    """The digits as a map-style data set of ``(image [1, 8, 8] float32 in [−1, 1], label int64)``."""

    shape = (1, 8, 8)
    num_classes = 10

    def __init__(self, split: str = "train"):
        self.split = split
        self.images, self.labels = digits_arrays(split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def held_out(self) -> "DigitsDataset":
        """The fixed held-out split (``"test"``, 297 images)."""
        return DigitsDataset("test")
