"""Reference statistics for FID and FD-DINOv2: μ and Σ (float64, unbiased) of the Inception pool3 features
(``--detector inception``, the default) or of the DINOv2 ViT-L/14 features (``--detector dinov2``, EDM2's
FD-DINOv2, ``edmlab.metrics.dinov2``) of every image of a data set.

    python -m edmlab.metrics.ref_stats --data DATA --dest stats.npz [--weights inception.pth] [--device cuda]
    python -m edmlab.metrics.ref_stats --data DATA --dest dinov2.npz --detector dinov2 \
        --dinov2-weights dinov2_vitl14_pretrain.pth
    python -m edmlab.metrics.ref_stats --data DATA --dest refs.pkl --detector inception,dinov2 [...]

DATA is ``digits`` (the embedded 8×8 digits), ``cifar10`` (from ``--root``, never downloaded) or a folder / ZIP in
NVlabs/edm's dataset_tool format. The ``.npz`` has the keys ``mu`` and ``sigma``, like NVlabs/edm ``fid.py ref``
(whose published files load into :func:`edmlab.metrics.fid_from_features` as they are). A ``.pkl`` destination
gets NVlabs/edm2's dataset-refs layout instead, any of the two metrics in one file (``{'fid': {mu, sigma},
'fd_dinov2': {mu, sigma}, 'num_images': N}``, ``edmlab.metrics.frechet.save_statistics_pickle``); both kinds load
through ``edmlab.metrics.frechet.load_statistics``.
"""
import argparse
import os
import sys

import torch

from edmlab.metrics.frechet import feature_statistics, save_statistics, save_statistics_pickle
from edmlab.images import to_uint8
from edmlab.metrics.inception import inception_features


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
        from edmlab.metrics.dinov2 import dinov2_features

        return feature_statistics(dinov2_features(images_uint8, weights_path, batch_size, device))
    if detector != "inception":
        raise ValueError(f"detector={detector!r}: choose one of {', '.join(DETECTORS)}")
    return feature_statistics(inception_features(images_uint8, weights_path, batch_size, device))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m edmlab.metrics.ref_stats", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="'digits', 'cifar10' or a folder/ZIP of images")
    parser.add_argument("--dest", required=True, help="output .npz (keys mu, sigma) or .pkl (NVlabs/edm2 layout)")
    parser.add_argument("--detector", default="inception",
                        help="inception: FID (default); dinov2: FD-DINOv2 (EDM2); inception,dinov2: both (.pkl only)")
    parser.add_argument("--weights", default=None, help="Inception weights file (default: torch.hub cache)")
    parser.add_argument("--dinov2-weights", default=None,
                        help="dinov2_vitl14_pretrain.pth for --detector dinov2 (default: torch.hub cache)")
    parser.add_argument("--root", default="data", help="folder holding cifar-10-batches-py/ (for --data cifar10)")
    parser.add_argument("--split", default=None, help="digits: all (default)/train/test; cifar10: train (default)/test")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images (default: all)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 2:
        parser.error(f"--max-images must be ≥ 2 (a covariance needs 2 images), got {args.max_images}")
    detectors = list(dict.fromkeys(args.detector.split(",")))
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        parser.error(f"--detector {unknown[0]!r}: choose {', '.join(DETECTORS)} or both, comma-separated")
    as_pickle = args.dest.lower().endswith(".pkl")
    if len(detectors) > 1 and not as_pickle:
        parser.error(f"--detector {args.detector} writes several statistics: give a .pkl --dest (NVlabs/edm2 layout)")
    if "dinov2" in detectors:
        from edmlab.metrics.dinov2 import resolve_weights

        resolve_weights(args.dinov2_weights)  # a missing file is named before the images are read
    images = load_uint8_images(args.data, args.root, args.split, args.max_images)
    stats = {METRIC_OF_DETECTOR[d]: compute_reference_statistics(
        images, args.dinov2_weights if d == "dinov2" else args.weights, args.batch, args.device, d) for d in detectors}
    if as_pickle:
        save_statistics_pickle(args.dest, stats, len(images))
    else:
        save_statistics(args.dest, *stats[METRIC_OF_DETECTOR[detectors[0]]])
    shapes = ", ".join(f"{metric} mu {mu.shape}, sigma {sigma.shape}" for metric, (mu, sigma) in stats.items())
    print(f"{args.dest}: {shapes} from {len(images)} images of {args.data}", file=sys.stderr)
    return args.dest


if __name__ == "__main__":
    main()
