"""Where the NVlabs/edm numbers hard-coded in tests/test_nets.py come from, reproduced with NVlabs' own code.

    python benchmarks/nvlabs_reference_outputs.py --edm /path/to/NVlabs/edm

It imports NVlabs/edm's ``training/networks.py`` from the checkout (only torch is needed; nothing of it is copied
here), then prints two tables:

1. parameter counts of their SongUNet / DhariwalUNet for the published runs (architecture keywords as their
   ``train.py`` sets them for --arch=ddpmpp/ncsnpp/adm, --cres, augment_dim 9 with --augment) next to
   ``PUBLISHED`` and the ADM count of the test;
2. their outputs on the fixed weights and inputs of ``fixed_weights_output`` (the same function the test runs on
   edmlab's nets) for every entry of ``NVLABS_OUTPUTS``, next to the test's values.

Exit status 1 if any number differs beyond the test's tolerance.
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# NVlabs/edm train.py: network keywords per --arch (its lines "if opts.arch == ...").
ARCH = {
    "ddpmpp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    "ncsnpp": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    "adm": dict(model_type="DhariwalUNet", model_channels=192, channel_mult=[1, 2, 3, 4]),
}
ADM_PARAMS = 295_899_267  # tests/test_nets.py::test_adm_parameter_count_matches_nvlabs_edm


def nvlabs_networks(edm: Path):
    if not (edm / "training" / "networks.py").is_file():
        raise FileNotFoundError(f"{edm} is not an NVlabs/edm checkout (no training/networks.py); "
                                f"git clone https://github.com/NVlabs/edm and pass its path as --edm")
    sys.path.insert(0, str(edm))
    from training import networks  # noqa: E402  (NVlabs' module, from the checkout)

    return networks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edm", type=Path, required=True, help="a local checkout of github.com/NVlabs/edm")
    args = parser.parse_args(argv)
    networks = nvlabs_networks(args.edm.resolve())
    sys.path.insert(0, str(ROOT / "tests"))
    import test_nets  # noqa: E402

    failures = 0
    print("| NVlabs network | data | NVlabs params | tests/test_nets.py | same |\n|---|---|---|---|---|")
    cases = [(name, data, overrides, exact) for name, data, overrides, exact, _ in test_nets.PUBLISHED]
    cases.append(("adm", dict(img_resolution=64, label_dim=1000), dict(augment_dim=0), ADM_PARAMS))
    for name, data, overrides, exact in cases:
        kwargs = {**ARCH[name], "augment_dim": 9, **overrides}
        cls = getattr(networks, kwargs.pop("model_type"))
        with torch.device("meta"):
            net = cls(in_channels=3, out_channels=3, **data, **kwargs)
        count = sum(p.numel() for p in net.parameters())
        failures += count != exact
        print(f"| {cls.__name__} {name} {overrides.get('channel_mult', '')} | {data} | {count:,} | {exact:,} | "
              f"{'yes' if count == exact else 'NO'} |")

    print("\n| net | NVlabs mean | NVlabs std | NVlabs out[0,0,0,:3] | NVlabs out[1,2,-1,-3:] | max diff to test |")
    print("|---|---|---|---|---|---|")
    for name, (cls, overrides, mean, std, head, tail) in test_nets.NVLABS_OUTPUTS.items():
        torch.manual_seed(0)
        net = getattr(networks, cls.__name__)(**{**test_nets.SMALL_16, **overrides})
        out = test_nets.fixed_weights_output(net)
        got = torch.cat([out.mean()[None], out.std()[None], out[0, 0, 0, :3], out[1, 2, -1, -3:]]).double()
        want = torch.tensor([mean, std, *head, *tail], dtype=torch.float64)
        diff = (got - want).abs()
        failures += bool((diff > 1e-5 + 1e-4 * want.abs()).any())
        fmt = lambda t: "[" + ", ".join(f"{v:.7g}" for v in t.tolist()) + "]"  # noqa: E731
        print(f"| {name} | {got[0]:.7g} | {got[1]:.7g} | {fmt(got[2:5])} | {fmt(got[5:])} | {diff.max():.2e} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
