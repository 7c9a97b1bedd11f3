"""Reference statistics for FID and FD-DINOv2: μ and Σ (float64, unbiased) of the Inception pool3 features
(``--detector inception``, the default) or of the DINOv2 ViT-L/14 features (``--detector dinov2``, EDM2's
FD-DINOv2, ``edmlab.evaluation.metrics.dinov2``) of every image of a data set.

An ``.npz`` destination (keys mu, sigma) is NVlabs/edm's layout, a ``.pkl`` NVlabs/edm2's dataset-refs layout
(one entry per metric); ``src/eval.py metrics.fid.ref=`` and ``metrics.fd_dinov2.ref=`` read either. A data set or
weights file that is not there is one line ``error: ...`` with exit code 2.
"""
import sys

from edmlab.cli.common import parser, run
from edmlab.evaluation.metrics.frechet import save_statistics, save_statistics_pickle
from edmlab.evaluation.metrics.ref_stats import DETECTORS, METRIC_OF_DETECTOR, compute_reference_statistics, \
    load_uint8_images


def main(argv: list[str] | None = None) -> str:
    cli = parser(__doc__, "ref_stats")
    cli.add_argument("--data", required=True, help="'digits', 'cifar10' or a folder/ZIP of images")
    cli.add_argument("--dest", required=True, help="output .npz (keys mu, sigma) or .pkl (NVlabs/edm2 layout)")
    cli.add_argument("--detector", default="inception",
                     help="inception: FID; dinov2: FD-DINOv2 (EDM2); inception,dinov2: both (.pkl only)")
    cli.add_argument("--weights", default=None, help="Inception weights file (default: torch.hub's cache)")
    cli.add_argument("--dinov2-weights", default=None,
                     help="dinov2_vitl14_pretrain.pth for --detector dinov2 (default: torch.hub's cache)")
    cli.add_argument("--root", default="data", help="folder holding cifar-10-batches-py/ (for --data cifar10)")
    cli.add_argument("--split", default=None, help="digits: all (default)/train/test; cifar10: train (default)/test")
    cli.add_argument("--max-images", type=int, default=None, help="only the first N images (default: all)")
    cli.add_argument("--batch", type=int, default=64, help="images per forward pass")
    cli.add_argument("--device", default="cpu", help="torch device of the feature network")
    args = cli.parse_args(argv)
    if args.max_images is not None and args.max_images < 2:
        cli.error(f"--max-images must be ≥ 2 (a covariance needs 2 images), got {args.max_images}")
    detectors = list(dict.fromkeys(args.detector.split(",")))
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        cli.error(f"--detector {unknown[0]!r}: choose {', '.join(DETECTORS)} or both, comma-separated")
    as_pickle = args.dest.lower().endswith(".pkl")
    if len(detectors) > 1 and not as_pickle:
        cli.error(f"--detector {args.detector} writes several statistics: give a .pkl --dest (NVlabs/edm2 layout)")
    if "dinov2" in detectors:
        from edmlab.evaluation.metrics.dinov2 import resolve_weights

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
    sys.exit(run(main))
