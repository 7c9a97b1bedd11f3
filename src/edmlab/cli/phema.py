"""``python -m edmlab.cli.phema <run> --std 0.03,0.06,0.12 [--at-kimg K]``: post-hoc EMA networks
``<run>/network-phema-<std>.pt`` reconstructed from a power-EMA run's snapshots (EDM2 §3, Algorithm 3)."""
import argparse

from edmlab.io.snapshots import write_networks


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m edmlab.cli.phema", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory of a training with ema=power (or its phema/ folder)")
    parser.add_argument("--std", required=True, help="comma-separated relative EMA stds in (0, 0.289), e.g. 0.05,0.1")
    parser.add_argument("--at-kimg", type=float, default=None, help="reconstruct at the last snapshot ≤ this kimg")
    parser.add_argument("--out-dir", default=None, help="where to write network-phema-<std>.pt (default: the run)")
    args = parser.parse_args(argv)
    try:
        stds = [float(s) for s in args.std.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--std {args.std!r}: expected comma-separated numbers such as 0.03,0.06,0.12")
    try:
        for path in write_networks(args.run, stds, args.at_kimg, args.out_dir):
            print(path)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
