"""edmlab's DINOv2 ViT-L/14 (``edmlab.evaluation.metrics.dinov2``) side by side with facebookresearch/dinov2's own code.

    git --git-dir=<mirror of facebookresearch/dinov2> archive HEAD dinov2 | tar -x -C /tmp/dinov2
    git --git-dir=<mirror of NVlabs/edm2> archive HEAD | tar -x -C /tmp/edm2            # optional: --edm2
    nice -n 10 python benchmarks/dinov2_side_by_side.py --dinov2 /tmp/dinov2 [--edm2 /tmp/edm2]

Their ``dinov2.hub.backbones.dinov2_vitl14(pretrained=False)`` (hub's constructor: vit_large, img_size 518,
patch 14, init_values 1.0, block_chunks 0) is built, every parameter is redrawn at random (LayerScale γ, norms,
positional embedding included, so that no part of the forward pass is near an identity), its state_dict is saved
and loaded into edmlab's network with ``strict=True`` through ``load_dinov2``. Printed: the parameter count of
theirs, and the largest absolute difference of the features, network against network at several input sizes
(224: EDM2's, 518: the training grid, no interpolation; a non-square one), and EDM2's whole preprocessing path
(uint8 images → features): with ``--edm2``, the ``DINOv2Detector`` of their ``calculate_metrics.py`` itself, its
``torch.hub.load`` answered with their network; without, their network after edmlab's ``dinov2_input``.

xFormers is not needed: their layers fall back to ``scaled_dot_product_attention`` without it
(``XFORMERS_DISABLED=1`` is set so that they do not even try). Random weights only; nothing is downloaded.
"""
import argparse
import os
import sys
import tempfile
import time
import warnings

import torch


def randomize(net: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn: weights ~ N(0, 1/fan_in), biases and norm shifts ~ N(0, 0.1²), norm scales
    ~ 1 + N(0, 0.1²), LayerScale γ ~ U(0.2, 1), tokens and positional embedding ~ N(0, 0.5²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.2 + 0.8 * torch.rand(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2 and name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def edm2_detector(edm2_dir: str, model: torch.nn.Module):
    """EDM2's ``DINOv2Detector()`` with ``torch.hub.load`` answering ``model`` (no download)."""
    sys.path.insert(0, edm2_dir)
    import calculate_metrics

    hub_load = torch.hub.load
    torch.hub.load = lambda *args, **kwargs: model
    try:
        return calculate_metrics.DINOv2Detector()
    finally:
        torch.hub.load = hub_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dinov2", required=True, help="a checkout of facebookresearch/dinov2 (holding dinov2/)")
    parser.add_argument("--edm2", default=None, help="a checkout of NVlabs/edm2 (for its DINOv2Detector)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["XFORMERS_DISABLED"] = "1"
    warnings.filterwarnings("ignore", "xFormers is")
    sys.path.insert(0, args.dinov2)
    from dinov2.hub.backbones import dinov2_vitl14

    import edmlab.evaluation.metrics.dinov2 as ours

    theirs = dinov2_vitl14(pretrained=False).eval()
    randomize(theirs, args.seed)
    count = sum(p.numel() for p in theirs.parameters())
    with torch.device("meta"):
        meta_vit_l14 = ours.vit_l14()
    print(f"their dinov2_vitl14: {count:,} parameters, {len(theirs.state_dict())} state_dict entries; "
          f"edmlab's vit_l14: {sum(p.numel() for p in meta_vit_l14.parameters()):,}")
    tmp = tempfile.TemporaryDirectory()
    path = os.path.join(tmp.name, "random_dinov2_vitl14.pth")
    torch.save(theirs.state_dict(), path)
    mine = ours.load_dinov2(path)  # strict=True, after the key/shape check

    g = torch.Generator().manual_seed(args.seed + 1)
    rows = []

    def compare(what: str, a: torch.Tensor, b: torch.Tensor, seconds: float) -> None:
        rows.append((what, tuple(a.shape), (a - b).abs().max().item(), b.abs().max().item(), seconds))

    with torch.no_grad():
        for h, w in [(224, 224), (518, 518), (154, 280)]:
            x = torch.randn(args.batch if h * w <= 224 * 224 else 2, 3, h, w, generator=g)
            tic = time.perf_counter()
            reference = theirs(x)
            compare(f"network {h}x{w}", mine(x), reference, time.perf_counter() - tic)
            if (h, w) == (224, 224):  # the check is sharp: the position-embedding offset 0.1 → 0 shows up
                ours.INTERPOLATE_OFFSET, offset = 0.0, ours.INTERPOLATE_OFFSET
                compare("network 224x224, edmlab with interpolate offset 0 instead of 0.1", mine(x), reference, 0.0)
                ours.INTERPOLATE_OFFSET = offset
                spread = reference.std(0).mean().item()
        images = torch.randint(0, 256, (args.batch, 3, 64, 64), generator=g, dtype=torch.uint8)
        half = args.batch // 2  # half of them smooth (8x8 blocks), half noise
        images[:half] = images[:half, :, :8, :8].repeat_interleave(8, 2).repeat_interleave(8, 3)
        if args.edm2 is not None:
            detector, path_name = edm2_detector(args.edm2, theirs), "EDM2 DINOv2Detector"
        else:
            detector, path_name = (lambda im: theirs(ours.dinov2_input(im))), "theirs after edmlab's dinov2_input"
        tic = time.perf_counter()
        reference = detector(images)
        seconds = time.perf_counter() - tic
        compare(f"uint8 64x64, dinov2_features vs {path_name}", ours.dinov2_features(images, path, args.batch),
                reference, seconds)
        gray = images[:, :1]
        compare(f"uint8 1-channel 64x64, dinov2_features vs {path_name} of it tiled to 3 channels",
                ours.dinov2_features(gray, path, args.batch), detector(gray.expand(-1, 3, -1, -1).contiguous()), 0.0)
    tmp.cleanup()

    print(f"features of distinct inputs differ: mean std over the batch at 224x224 = {spread:.3g}")
    print(f"\n| input | features | max abs diff | max abs feature | their forward (s) |\n|---|---|---|---|---|")
    for what, shape, diff, scale, seconds in rows:
        print(f"| {what} | {list(shape)} | {diff:.3g} | {scale:.3g} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
