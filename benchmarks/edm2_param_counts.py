"""Parameter counts of network=edm2's presets against NVlabs/edm2's, and (with --nvlabs) a side-by-side check.

    .venv/bin/python benchmarks/edm2_param_counts.py                       # our counts vs the recorded NVlabs ones
    .venv/bin/python benchmarks/edm2_param_counts.py --nvlabs /tmp/edm2    # also build NVlabs' Precond beside ours

The recorded counts come from NVlabs/edm2's ``training.networks_edm2.Precond(img_resolution=64, img_channels=3,
label_dim=1000, model_channels=c, dropout=d)`` (the networks of train_edm2.py's edm2-img64-* presets), built from a
checkout of github.com/NVlabs/edm2 (it needs only torch and numpy). With --nvlabs the script rebuilds them, loads
NVlabs' state dict into ours strictly, and prints the largest output difference on random inputs (eval and train
mode, dropout and the forced weight normalisation included).
"""
import argparse
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from edmlab.io.network_file import build_denoiser
from edmlab.design.preconditioning import EDM2Precond
from edmlab.nets import EDM2UNet

CONF = Path(__file__).resolve().parents[1] / "conf"
NVLABS_IMG64 = {"s": 280_209_381, "m": 497_803_173, "l": 777_492_325, "xl": 1_119_276_837}
IMG64 = dict(img_resolution=64, in_channels=3, out_channels=3, label_dim=1000, augment_dim=0)


def preset_denoiser(overrides: list[str], network_kwargs: dict, device="meta"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    spec = {"network": OmegaConf.to_container(cfg.network, resolve=True), "network_kwargs": network_kwargs,
            "preconditioning": OmegaConf.to_container(cfg.preconditioning, resolve=True)}
    with torch.device(device):
        return cfg, build_denoiser(spec)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def side_by_side(nvlabs_dir: str) -> list[str]:
    """Max |ours − NVlabs'| of D and u(σ) for three configurations, NVlabs' weights loaded into ours strictly."""
    sys.path.insert(0, nvlabs_dir)
    from training.networks_edm2 import Precond  # noqa: E402  (NVlabs' module, from the given checkout)

    rows = []
    for res, ch, classes, kw in [(8, 1, 10, dict(model_channels=32, channel_mult=[1, 2], num_blocks=1,
                                                 attn_resolutions=[4])),
                                 (16, 3, 0, dict(model_channels=64, channel_mult=[1, 2, 2], dropout=0.1)),
                                 (64, 3, 1000, dict(model_channels=64))]:
        torch.manual_seed(0)
        theirs = Precond(img_resolution=res, img_channels=ch, label_dim=classes, use_fp16=False, **kw)
        with torch.no_grad():
            for p in theirs.parameters():
                p.normal_()
        ours = EDM2Precond(EDM2UNet(res, ch, ch, classes, **kw))
        ours.load_state_dict(theirs.state_dict(), strict=True)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        x, sigma = torch.randn(4, ch, res, res), torch.tensor([0.01, 0.3, 2.0, 40.0])
        labels = torch.eye(classes)[torch.arange(4) % classes] if classes else None
        diffs = []
        for train in (False, True):
            theirs.train(train), ours.train(train)
            torch.manual_seed(1)
            a, ua = theirs(x, sigma, labels, return_logvar=True)
            torch.manual_seed(1)
            b, ub = ours(x, sigma, labels, return_logvar=True)
            diffs.append(max((a - b).abs().max().item(), (ua - ub).abs().max().item()))
        rows.append(f"| {res}×{res}×{ch}, {classes} classes, {kw} | {count(theirs):,} | {count(ours):,} | "
                    f"{diffs[0]:.1e} | {diffs[1]:.1e} |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvlabs", help="a checkout of github.com/NVlabs/edm2 to build its networks beside ours")
    args = parser.parse_args()

    print("| preset | edmlab params | NVlabs/edm2 params | equal |\n|---|---|---|---|")
    for size, expected in NVLABS_IMG64.items():
        _, D = preset_denoiser([f"experiment=edm2_img64_{size}"], IMG64)
        print(f"| edm2_img64_{size} | {count(D):,} | {expected:,} | {count(D) == expected} |")
    digits = dict(img_resolution=8, in_channels=1, out_channels=1, label_dim=0, augment_dim=0)
    for overrides in (["experiment=edm2_digits"], ["network=edm2_digits"], []):
        _, D = preset_denoiser(overrides, digits)
        print(f"| digits {' '.join(overrides) or '(digits_small)'} | {count(D):,} | | |")
    if args.nvlabs:
        print("\n| NVlabs Precond config | NVlabs params | edmlab params | max diff eval | max diff train |\n"
              "|---|---|---|---|---|")
        print("\n".join(side_by_side(args.nvlabs)))


if __name__ == "__main__":
    main()
