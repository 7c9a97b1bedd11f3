"""Do torch-fidelity's Inception-v3 and NVlabs' own detector give the same FID statistics on the same images?

    .venv/bin/python benchmarks/detector_agreement.py \\
        --torch-fidelity-weights weights-inception-2015-12-05-6726825d.pth --nvlabs-detector inception-2015-12-05.pkl \\
        [--images digits|cifar10|<zip|folder>] [--generated <zip|folder>]

Both detectors see the same uint8 images (grey tiled to RGB). Printed: the largest and mean absolute difference of
the 2048-d pool features, of their means μ and covariances Σ, the Fréchet distance between the two sets of
statistics (0 when the detectors agree), and the FID of a generated set against the reference set under each
detector. Without ``--generated`` the reference is the first half of ``--images`` and the "generated" set is the
second half with uniform noise of ±``--noise`` grey levels added (a fixed seed), an FID well above 0 to compare.

Without both weights files it names the missing one and exits with status 2. ``--self-check DIR`` runs the plumbing
without NVlabs' file: random torch-fidelity weights, and from the same weights a TorchScript detector with NVlabs'
interface as ``.pt`` and as the persistence ``.pkl`` edmlab reads (``edmlab.evaluation.metrics.nvlabs_inception``); features,
μ, Σ and the two FIDs must agree exactly (the Fréchet distance of identical statistics is 0 up to sqrtm's rounding).
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edmlab.evaluation.metrics.frechet import feature_statistics, frechet_distance
from edmlab.evaluation.metrics.inception import inception_features
from edmlab.evaluation.metrics.inception_weights import verify_weights
from edmlab.evaluation.metrics.nvlabs_inception import inspect_detector_file, nvlabs_features
from edmlab.evaluation.metrics.ref_stats import load_uint8_images


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch-fidelity-weights", help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    parser.add_argument("--nvlabs-detector", help="NVlabs' inception-2015-12-05.pkl or .pt")
    parser.add_argument("--images", default="digits", help="digits, cifar10 (with --root) or a ZIP/folder of images")
    parser.add_argument("--root", default="data", help="data root for --images cifar10")
    parser.add_argument("--max-images", type=int, default=512)
    parser.add_argument("--generated", help="ZIP/folder of generated images (default: the noisy second half)")
    parser.add_argument("--noise", type=int, default=16, help="± grey levels of the default generated set's noise")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--show-source", action="store_true", help="print the pickle's module_src (never run)")
    parser.add_argument("--self-check", metavar="DIR", help="write random weights and detector files made from "
                                                            "them into DIR and compare those (expect 0)")
    return parser.parse_args(argv)


def missing_files(args) -> list[str]:
    from edmlab.evaluation.metrics.inception_weights import weights_file, weights_url
    from edmlab.evaluation.metrics.nvlabs_inception import URL_PKL, URL_PT

    missing = []
    for option, path, what in [("--torch-fidelity-weights", args.torch_fidelity_weights,
                                f"torch-fidelity's {weights_file()} ({weights_url()})"),
                               ("--nvlabs-detector", args.nvlabs_detector,
                                f"NVlabs' inception-2015-12-05.pkl ({URL_PKL}) or .pt ({URL_PT})")]:
        if path is None:
            missing.append(f"{option} not given: pass {what}")
        elif not os.path.isfile(os.path.expanduser(path)):
            missing.append(f"{option} {path}: no such file; expected {what}")
    return missing


def sets(args) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(reference, generated) uint8 [N, C, H, W] and how the generated set was made."""
    images = load_uint8_images(args.images, args.root, max_images=args.max_images)
    if args.generated:
        return images, load_uint8_images(args.generated, max_images=args.max_images), args.generated
    half = len(images) // 2
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(-args.noise, args.noise + 1, images[half:].shape, generator=g)
    generated = (images[half:].to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)
    return images[:half], generated, f"second half of {args.images} + uniform noise ±{args.noise}"


def compare(args) -> dict:
    weights = verify_weights(os.path.expanduser(args.torch_fidelity_weights))
    detector = os.path.expanduser(args.nvlabs_detector)
    found = inspect_detector_file(detector)
    print(f"NVlabs detector {detector}: {found.form}, TorchScript archive at {found.where} "
          f"(SHA-256 {found.archive_sha256[:16]}…), persistent classes {found.classes or '-'}")
    for name, src in found.module_src.items():  # what the pickle's own code would do (read as text, never run)
        jit, forward = "torch.jit.load" in src, "def forward" in src
        hint = "" if args.show_source else " (--show-source prints it)"
        print(f"module_src of {name}: {len(src.splitlines())} lines, mentions torch.jit.load: "
              f"{'yes' if jit else 'NO'}, defines forward: {'yes' if forward else 'no'}{hint}")
        if args.show_source:
            print(f"--- module_src of {name} (not run) ---\n{src}\n--- end ---")
    reference, generated, how = sets(args)
    print(f"images: reference {tuple(reference.shape)} from {args.images}, generated {tuple(generated.shape)} ({how}); "
          f"device {args.device}")
    out = {}
    for name, feats in [("torch-fidelity", lambda x: inception_features(x, weights, args.batch, args.device).double()),
                        ("nvlabs", lambda x: nvlabs_features(x, detector, args.batch, args.device))]:
        start = time.time()
        out[name] = (feats(reference), feats(generated))
        print(f"{name}: features of {len(reference) + len(generated)} images in {time.time() - start:.1f} s")
    (ref_a, gen_a), (ref_b, gen_b) = out["torch-fidelity"], out["nvlabs"]
    diff = (ref_a - ref_b).abs()
    (mu_a, sigma_a), (mu_b, sigma_b) = feature_statistics(ref_a), feature_statistics(ref_b)
    result = dict(
        feature_max_abs=float(diff.max()), feature_mean_abs=float(diff.mean()),
        feature_scale=float(ref_a.abs().mean()),
        mu_max_abs=float(np.abs(mu_a - mu_b).max()), sigma_max_abs=float(np.abs(sigma_a - sigma_b).max()),
        sigma_rel_frobenius=float(np.linalg.norm(sigma_a - sigma_b) / np.linalg.norm(sigma_a)),
        fid_between_detectors=frechet_distance(mu_a, sigma_a, mu_b, sigma_b),
        fid_torch_fidelity=frechet_distance(*feature_statistics(gen_a), mu_a, sigma_a),
        fid_nvlabs=frechet_distance(*feature_statistics(gen_b), mu_b, sigma_b),
    )
    print("| quantity | value |\n|---|---:|")
    rows = [("max abs feature difference", "feature_max_abs"), ("mean abs feature difference", "feature_mean_abs"),
            ("mean abs feature (scale)", "feature_scale"), ("max abs μ difference", "mu_max_abs"),
            ("max abs Σ difference", "sigma_max_abs"), ("‖ΔΣ‖_F / ‖Σ‖_F", "sigma_rel_frobenius"),
            ("FD(torch-fidelity stats, NVlabs stats), same images", "fid_between_detectors"),
            ("FID generated vs reference, torch-fidelity", "fid_torch_fidelity"),
            ("FID generated vs reference, NVlabs", "fid_nvlabs")]
    for label, key in rows:
        print(f"| {label} | {result[key]:.6g} |")
    print(f"| FID difference (NVlabs − torch-fidelity) | {result['fid_nvlabs'] - result['fid_torch_fidelity']:.3g} |")
    return result


def self_check(args) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the random detectors of the suite
    from inception_fixtures import write_detector_files, write_random_inception_weights

    os.makedirs(args.self_check, exist_ok=True)
    args.torch_fidelity_weights = os.path.join(args.self_check, "random-inception.pth")
    write_random_inception_weights(args.torch_fidelity_weights, seed=0)
    pt, pkl = write_detector_files(args.torch_fidelity_weights, args.self_check)
    results = {}
    for path in (pt, pkl):
        print(f"\n== self-check: random torch-fidelity weights vs {path.name} made from them ==")
        args.nvlabs_detector = str(path)
        results[path.suffix] = compare(args)
    return results


def main(argv=None) -> int:
    args = parse(argv)
    if args.self_check:
        results = self_check(args)
        exact = all(r["feature_max_abs"] == 0 and r["mu_max_abs"] == 0 and r["sigma_max_abs"] == 0
                    and r["fid_nvlabs"] == r["fid_torch_fidelity"] for r in results.values())
        print(f"\nself-check: features {'identical' if exact else 'DIFFER'} for .pt and .pkl")
        return 0 if exact else 1
    missing = missing_files(args)
    if missing:
        for line in missing:
            print(f"detector_agreement: {line}", file=sys.stderr)
        return 2
    compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
