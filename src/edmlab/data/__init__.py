"""Data sets (map-style, items ``(x float32, label int64)``, each with ``shape`` and ``num_classes``),
and the resumable infinite sampler."""
from edmlab.data.cifar10 import CIFAR10Dataset
from edmlab.data.digits import DigitsDataset, digits_arrays
from edmlab.data.image_folder import ImageFolderDataset
from edmlab.data.points import PointsDataset
from edmlab.data.sampler import InfiniteSampler

__all__ = ["CIFAR10Dataset", "DigitsDataset", "digits_arrays",
           "ImageFolderDataset", "PointsDataset", "InfiniteSampler"]
