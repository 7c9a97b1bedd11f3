"""Data sets (map-style, items ``(x float32, label int64)``, each with ``shape`` and ``num_classes``),
EDM's augmentation pipe and the resumable infinite sampler."""
from edmlab.data.augment import AUGMENT_DIM, AugmentParams, AugmentPipe
from edmlab.data.cifar10 import CIFAR10Dataset
from edmlab.data.digits import DigitsDataset, digits_arrays
from edmlab.data.image_folder import ImageFolderDataset
from edmlab.data.points import PointsDataset
from edmlab.data.sampler import InfiniteSampler

__all__ = ["AUGMENT_DIM", "AugmentParams", "AugmentPipe", "CIFAR10Dataset", "DigitsDataset", "digits_arrays",
           "ImageFolderDataset", "PointsDataset", "InfiniteSampler"]
