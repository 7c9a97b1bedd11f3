"""Reference statistics for FID and FD-DINOv2: μ and Σ (float64, unbiased) of the Inception pool3 features
(``--detector inception``, the default) or of the DINOv2 ViT-L/14 features (``--detector dinov2``, EDM2's
FD-DINOv2, ``edmlab.evaluation.metrics.dinov2``) of every image of a data set.

    python -m edmlab.cli.ref_stats --data DATA --dest stats.npz [--weights inception.pth] [--device cuda]
    python -m edmlab.cli.ref_stats --data DATA --dest dinov2.npz --detector dinov2 \
        --dinov2-weights dinov2_vitl14_pretrain.pth
    python -m edmlab.cli.ref_stats --data DATA --dest refs.pkl --detector inception,dinov2 [...]

DATA is ``digits`` (the embedded 8×8 digits), ``cifar10`` (from ``--root``, never downloaded) or a folder / ZIP in
NVlabs/edm's dataset_tool format. The ``.npz`` has the keys ``mu`` and ``sigma``, like NVlabs/edm ``fid.py ref``
(whose published files load into :func:`edmlab.evaluation.metrics.fid_from_features` as they are). A ``.pkl`` destination
gets NVlabs/edm2's dataset-refs layout instead, any of the two metrics in one file (``{'fid': {mu, sigma},
'fd_dinov2': {mu, sigma}, 'num_images': N}``, ``edmlab.evaluation.metrics.frechet.save_statistics_pickle``); both kinds load
through ``edmlab.evaluation.metrics.frechet.load_statistics``.
"""
import os

import torch

from edmlab.evaluation.metrics.frechet import feature_statistics
from edmlab.infra.images import to_uint8
from edmlab.evaluation.metrics.inception import inception_features


def load_uint8_images(data: str, root: str = "data", split: str | None = None, max_images: int | None = None):
    """All images of ``data`` as uint8 [N, C, H, W] (the first ``max_images`` when given)."""
    if data == "digits":
        from edmlab.data.digits import digits_arrays

        images = digits_arrays(split or "all")[0]
    elif data == "cifar10":
        from edmlab.data.cifar10 import CIFAR10Dataset

        if split not in (None, "train", "test"):
            raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
        return CIFAR10Dataset(root, train=split != "test").images[:max_images]
    elif os.path.exists(data):
        from edmlab.data.image_folder import ImageFolderDataset

        dataset = ImageFolderDataset(data, use_labels=False, decode_at_start=0)  # decoded right below
        count = len(dataset) if max_images is None else min(max_images, len(dataset))
        return torch.stack([to_uint8(dataset[i][0]) for i in range(count)])
    else:
        raise FileNotFoundError(f"--data {data!r} is neither 'digits', 'cifar10' nor an existing folder/ZIP of images")
    return to_uint8(images[:max_images])


DETECTORS = ("inception", "dinov2")
METRIC_OF_DETECTOR = {"inception": "fid", "dinov2": "fd_dinov2"}  # the entries of an NVlabs/edm2 statistics pickle


def compute_reference_statistics(images_uint8: torch.Tensor, weights_path=None, batch_size: int = 64, device="cpu",
                                 detector: str = "inception"):
    """(μ [D], Σ [D, D]) of the features of ``images_uint8``: Inception pool3 (D = 2048) or DINOv2 (D = 1024);
    ``weights_path`` is that network's weights file."""
    if detector == "dinov2":
        from edmlab.evaluation.metrics.dinov2 import dinov2_features

        return feature_statistics(dinov2_features(images_uint8, weights_path, batch_size, device))
    if detector != "inception":
        raise ValueError(f"detector={detector!r}: choose one of {', '.join(DETECTORS)}")
    return feature_statistics(inception_features(images_uint8, weights_path, batch_size, device))
