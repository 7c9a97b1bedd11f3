"""edmlab vs NVlabs/edm's own code, side by side, on every published network configuration (random weights).

    python benchmarks/nvlabs_side_by_side.py --edm /path/to/NVlabs/edm [--presets a,b] [--seeds 0-2] [--steps 18]
                                             [--sample-channels 32] [--device cpu]

For each preset it builds NVlabs' preconditioned network (their ``training/networks.py``, keywords of their
``train.py``) with random weights (every parameter drawn, so no layer is zero), pickles it as their training loop
does (``dict(ema=…, loss_fn=…, augment_pipe=…, dataset_kwargs=…)`` through ``pickle.dump``), loads the file with
``edmlab.load`` (which never runs the pickled code) and prints

- the max |D_NVlabs − D_edmlab| at full size over 3 images at σ = 0.02, 1, 40 (and the output's max |D|);
- the max |x_NVlabs − x_edmlab| of samples for ``--seeds`` through their ``edm_sampler`` (EDM presets) or their
  ``ablation_sampler`` with the original paper's settings (VP/VE/iDDPM baselines: Euler; vp/ve/iddpm grid,
  schedule and scaling) vs ``edmlab.sample`` with the same settings and the same latents (their
  StackedRandomGenerator). On a CPU the samples are drawn from the same preset at ``--sample-channels`` base width
  (the full nets cost minutes per image there); ``--sample-channels 0`` samples the full-size nets (use a GPU).

Only torch, click, tqdm and Pillow are needed by NVlabs' modules; nothing of them is copied into edmlab.
"""
import argparse
import copy
import gc
import math
import pickle
import sys
import tempfile
import time
from pathlib import Path

import torch

import edmlab

from nvlabs_reference_outputs import ARCH  # noqa: E402  (NVlabs/edm train.py's --arch keywords; this folder)

CRES_64 = dict(channel_mult=[1, 2, 2, 2])
ORIGINAL_SAMPLER = {  # EDM Table 1, "original sampler" columns
    "VPPrecond": dict(solver="euler", discretization="vp", schedule="vp", scaling="vp"),
    "VEPrecond": dict(solver="euler", discretization="ve", schedule="ve", scaling="none"),
    "iDDPMPrecond": dict(solver="euler", discretization="iddpm", schedule="linear", scaling="none"),
}
# The published pickles (NVlabs/edm README "Pre-trained models"): (precond, arch, resolution, label_dim, keywords).
PRESETS = {
    "edm-cifar10-32x32-cond-vp": ("EDMPrecond", "ddpmpp", 32, 10, dict(augment_dim=9)),
    "edm-cifar10-32x32-cond-ve": ("EDMPrecond", "ncsnpp", 32, 10, dict(augment_dim=9)),
    "edm-cifar10-32x32-uncond-vp": ("EDMPrecond", "ddpmpp", 32, 0, dict(augment_dim=9)),
    "edm-cifar10-32x32-uncond-ve": ("EDMPrecond", "ncsnpp", 32, 0, dict(augment_dim=9)),
    "edm-ffhq|afhqv2-64x64-uncond-vp": ("EDMPrecond", "ddpmpp", 64, 0, dict(augment_dim=9, **CRES_64)),
    "edm-ffhq|afhqv2-64x64-uncond-ve": ("EDMPrecond", "ncsnpp", 64, 0, dict(augment_dim=9, **CRES_64)),
    "edm-imagenet-64x64-cond-adm": ("EDMPrecond", "adm", 64, 1000, {}),
    "baseline-cifar10-32x32-uncond-vp": ("VPPrecond", "ddpmpp", 32, 0, {}),
    "baseline-cifar10-32x32-uncond-ve": ("VEPrecond", "ncsnpp", 32, 0, {}),
    "baseline-ffhq|afhqv2-64x64-uncond-vp": ("VPPrecond", "ddpmpp", 64, 0, CRES_64),
    "baseline-ffhq|afhqv2-64x64-uncond-ve": ("VEPrecond", "ncsnpp", 64, 0, CRES_64),
    "baseline-imagenet-64x64-cond-adm": ("iDDPMPrecond", "adm", 64, 1000, {}),
}


def nvlabs_modules(edm: Path):
    if not (edm / "training" / "networks.py").is_file() or not (edm / "generate.py").is_file():
        raise FileNotFoundError(f"{edm} is not an NVlabs/edm checkout (no training/networks.py, generate.py); "
                                f"git clone https://github.com/NVlabs/edm and pass its path as --edm")
    sys.path.insert(0, str(edm))
    import generate  # noqa: E402  (NVlabs' modules, from the checkout)
    from training import augment, loss, networks  # noqa: E402

    return networks, loss, augment, generate


def randomize(net: torch.nn.Module, seed: int):
    """Every parameter random: matrices N(0, 1/fan_in), vectors their init value + N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(noise / math.sqrt(p[0].numel()) if p.ndim > 1 else p + 0.1 * noise)


def snapshot(modules, name: str, channels_override: int | None, seed: int, folder: Path):
    """(NVlabs net, path of its pickle written as NVlabs' training loop writes it)."""
    networks, loss, augment, _ = modules
    precond, arch, resolution, label_dim, extra = PRESETS[name]
    kwargs = {**ARCH[arch], **extra}
    if channels_override:
        kwargs["model_channels"] = channels_override
    torch.manual_seed(seed)
    net = getattr(networks, precond)(img_resolution=resolution, img_channels=3, label_dim=label_dim, **kwargs)
    randomize(net, seed)
    loss_fn = {"EDMPrecond": loss.EDMLoss, "VPPrecond": loss.VPLoss, "VEPrecond": loss.VELoss,
               "iDDPMPrecond": loss.EDMLoss}[precond]()
    data = dict(ema=copy.deepcopy(net).eval().requires_grad_(False), loss_fn=loss_fn,
                augment_pipe=augment.AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
                                                 translate_frac=1),
                dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path=f"{name}.zip"))
    path = folder / f"{name.replace('|', '-')}.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return net.eval(), path


def output_difference(net, D, label_dim: int, device) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, net.img_resolution, net.img_resolution, generator=g).to(device)
    sigma = torch.tensor([0.02, 1.0, 40.0], device=device)
    labels = torch.eye(label_dim, device=device)[[1, 2, 3]] if label_dim else None
    with torch.no_grad():
        ours, theirs = D(x * sigma.reshape(-1, 1, 1, 1), sigma, labels), net(x * sigma.reshape(-1, 1, 1, 1), sigma,
                                                                          labels)
    return float((ours - theirs).abs().max()), float(theirs.abs().max())


def sample_difference(modules, net, D, precond: str, label_dim: int, seeds: list[int], steps: int, device):
    generate = modules[3]
    rnd = generate.StackedRandomGenerator(device, seeds)
    latents = rnd.randn([len(seeds), 3, net.img_resolution, net.img_resolution], device=device)
    labels = torch.eye(label_dim, device=device)[rnd.randint(label_dim, size=[len(seeds)], device=device)] \
        if label_dim else None
    same_latents = torch.equal(edmlab.SeedStreams(seeds).randn([3, net.img_resolution, net.img_resolution]).to(device),
                               latents)
    with torch.no_grad():
        if precond == "EDMPrecond":
            theirs = generate.edm_sampler(net, latents, labels, num_steps=steps)
            settings = dict(solver="heun", discretization="edm", schedule="linear", scaling="none")
        else:
            settings = ORIGINAL_SAMPLER[precond]
            theirs = generate.ablation_sampler(net, latents, labels, num_steps=steps, **settings)
        ours = edmlab.sample(D, latents, num_steps=steps, class_labels=labels, **settings)
    return float((ours.to(theirs.dtype) - theirs).abs().max()), float(theirs.abs().max()), same_latents, settings


def edm2_difference(edm2: Path, folder: Path) -> float:
    """max |D_NVlabs − D_edmlab| of an NVlabs/edm2 Precond (S-like layout at 16×16, 32 channels, random weights) saved
    as their training loop saves snapshots (EasyDict with ``ema`` in float16, ``encoder``, ``dataset_kwargs``)."""
    sys.path.insert(0, str(edm2))
    for name in [m for m in sys.modules if m == "training" or m.startswith(("training.", "torch_utils", "dnnlib"))]:
        del sys.modules[name]  # edm2's packages share their names with edm's
    import dnnlib  # noqa: E402  (NVlabs/edm2's modules, from the checkout)
    from training import encoders, networks_edm2  # noqa: E402

    torch.manual_seed(0)
    net = networks_edm2.Precond(img_resolution=16, img_channels=3, label_dim=10, model_channels=32,
                                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], use_fp16=False)
    randomize(net, 0)
    data = dnnlib.EasyDict(encoder=encoders.StandardRGBEncoder(), dataset_kwargs=dnnlib.EasyDict(path="img64.zip"),
                           loss_fn=None)
    data.ema = copy.deepcopy(net).eval().requires_grad_(False).to(torch.float16)
    path = folder / "edm2-snapshot.pkl"
    path.write_bytes(pickle.dumps(data))
    D, theirs = edmlab.load(path), data.ema.float()
    x, sigma = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0.02, 1.0, 40.0])
    with torch.no_grad():
        return float((D(x, sigma, torch.eye(10)[[1, 2, 3]]) - theirs(x, sigma, torch.eye(10)[[1, 2, 3]])).abs().max())


def parse_seeds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edm", type=Path, required=True, help="a local checkout of github.com/NVlabs/edm")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated names (default: all)")
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--sample-channels", type=int, default=32, help="base width of the sampled nets; 0 = full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--edm2", type=Path, help="also a local checkout of github.com/NVlabs/edm2 (its Precond)")
    args = parser.parse_args(argv)
    names = [n for n in args.presets.split(",") if n]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        parser.error(f"unknown presets {unknown}; choose from {list(PRESETS)}")
    modules = nvlabs_modules(args.edm.resolve())
    device, seeds = torch.device(args.device), parse_seeds(args.seeds)
    width = "full" if not args.sample_channels else f"width {args.sample_channels}"
    print(f"| preset | NVlabs net | params | max abs(ΔD), full size | max abs(D) | max abs(Δx), {len(seeds)} seeds, "
          f"{args.steps} steps, {width} | max abs(x) | sampler | latents equal | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for k, name in enumerate(names):
            start = time.time()
            precond, arch, _, label_dim, _ = PRESETS[name]
            net, path = snapshot(modules, name, None, k, Path(tmp))
            D = edmlab.load(path, device)  # refuses any mismatch of names and shapes (a strict load)
            net.to(device)
            d_out, d_max = output_difference(net, D, label_dim, device)
            params = sum(p.numel() for p in D.parameters())
            if args.sample_channels:
                del net, D
                gc.collect()
                net, path = snapshot(modules, name, args.sample_channels, k, Path(tmp))
                D, net = edmlab.load(path, device), net.to(device)
            d_x, x_max, same, settings = sample_difference(modules, net, D, precond, label_dim, seeds, args.steps,
                                                           device)
            sampler = "edm_sampler" if precond == "EDMPrecond" else "ablation_sampler " + "/".join(settings.values())
            print(f"| {name.replace('|', '/')} | {precond}({net.model.__class__.__name__} {arch}) | {params / 1e6:.2f}M | {d_out:.1e} | "
                  f"{d_max:.3g} | {d_x:.1e} | {x_max:.3g} | {sampler} | {'yes' if same else 'NO'} | "
                  f"{time.time() - start:.0f} |", flush=True)
            del net, D
            path.unlink()
            gc.collect()
        if args.edm2:
            print(f"\nNVlabs/edm2 Precond(UNet), float16 snapshot: max abs(ΔD) = "
                  f"{edm2_difference(args.edm2.resolve(), Path(tmp)):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
