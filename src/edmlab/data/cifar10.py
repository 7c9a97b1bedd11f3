"""CIFAR-10 (50,000 training / 10,000 test images, 3×32×32, 10 classes) through torchvision.

Items are ``(x float32 [3, 32, 32] = uint8/127.5 − 1, label int64)``. The files are looked up in
``root``: the extracted ``cifar-10-batches-py/`` folder, or else ``cifar-10-python.tar.gz``, which
is then extracted next to itself. ``download=True`` lets torchvision fetch the archive (network).
"""
import os

import torch

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


class CIFAR10Dataset(torch.utils.data.Dataset):
    """CIFAR-10 train (``train=True``) or test split from ``root``; see the module docstring."""

    shape = (3, 32, 32)
    num_classes = 10

    def __init__(self, root: str = "data", train: bool = True, download: bool = False):
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import extract_archive

        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.train, self.download = bool(train), bool(download)
        folder, archive = os.path.join(self.root, FOLDER), os.path.join(self.root, ARCHIVE)
        where = (f"put {ARCHIVE} ({URL}) or its extracted {FOLDER}/ folder in {self.root}, or point "
                 f"data.dataset.root at the folder that holds them; data.dataset.download=true fetches it "
                 f"but needs a network")
        if not self.download and not os.path.isdir(folder):
            if not os.path.isfile(archive):
                raise FileNotFoundError(f"CIFAR-10 not found: neither {folder} nor {archive} exists; {where}")
            extract_archive(archive, self.root)
        try:
            source = CIFAR10(self.root, train=self.train, download=self.download)
        except RuntimeError as error:
            raise FileNotFoundError(f"CIFAR-10 files in {folder} are missing or corrupt ({error}); "
                                    f"delete the folder and {where}") from None
        except OSError as error:
            raise FileNotFoundError(f"CIFAR-10 download into {self.root} failed ({error}); {where}") from None
        self.images = torch.from_numpy(source.data).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.as_tensor(source.targets, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].to(torch.float32) / 127.5 - 1, self.labels[index]

    def held_out(self) -> "CIFAR10Dataset":
        """The other split (the 10,000 test images for the training set), from the same ``root``."""
        return CIFAR10Dataset(self.root, train=not self.train, download=False)
