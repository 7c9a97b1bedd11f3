"""Post-hoc EMA networks ``<run>/network-phema-<std>.pt`` reconstructed from a power-EMA run's snapshots (EDM2 §3,
Algorithm 3).

Each file is an edmlab network file (``edmlab.load``, ``src/eval.py ckpt=``); ``src/eval.py ckpt=<run> ema.std=S``
reconstructs on the fly instead. A std outside (0, 0.289), a run without snapshots or a refused snapshot is one
line ``error: ...`` with exit code 2.
"""
import sys

from edmlab.cli.common import fail, parser, run
from edmlab.io.snapshots import write_networks


def main(argv=None):
    cli = parser(__doc__, "phema")
    cli.add_argument("run", help="run directory of a training with ema=power (or its phema/ folder)")
    cli.add_argument("--std", required=True, help="comma-separated relative EMA stds in (0, 0.289), e.g. 0.05,0.1")
    cli.add_argument("--at-kimg", type=float, default=None,
                     help="reconstruct at the last snapshot ≤ this kimg (default: the last snapshot)")
    cli.add_argument("--out-dir", default=None, help="where to write network-phema-<std>.pt (default: the run)")
    args = cli.parse_args(argv)
    try:
        stds = [float(s) for s in args.std.split(",") if s.strip()]
    except ValueError:
        cli.error(f"--std {args.std!r}: expected comma-separated numbers such as 0.03,0.06,0.12")
    try:
        for path in write_networks(args.run, stds, args.at_kimg, args.out_dir):
            print(path)
    except (ValueError, FileNotFoundError) as e:
        fail(e)


if __name__ == "__main__":
    sys.exit(run(main))
