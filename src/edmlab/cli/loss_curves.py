"""EDM Fig. 5a: the training loss per noise level σ of training runs, from their CSV logs (``csv/metrics.csv``).

One run: its loss per σ bin averaged over ``--phases`` spans of training (later spans darker), and e^u(σ) dashed
when the weighting is learned. Several runs: the last of those spans of each, in one figure
(``edmlab.viz.loss_curves``). A run without a CSV log or without logged σ bins is one line ``error: ...`` with
exit code 2.
"""
import sys

from edmlab.cli.common import parser, run
from edmlab.viz.loss_curves import plot_run, plot_runs

SEVERAL_RUNS_OUT = "outputs/figures/loss_per_sigma.png"


def main(argv: list[str] | None = None):
    cli = parser(__doc__, "loss_curves")
    cli.add_argument("runs", nargs="+", help="run directories of src/train.py")
    cli.add_argument("--out", default=None,
                     help=f"the PNG (default: one run, <run>/loss_per_sigma.png; several, {SEVERAL_RUNS_OUT})")
    cli.add_argument("--phases", type=int, default=4, help="spans of training drawn (one run) / the last of")
    args = cli.parse_args(argv)
    if args.phases < 1:
        cli.error(f"--phases={args.phases} must be >= 1")
    if len(args.runs) == 1:
        path = plot_run(args.runs[0], args.out, args.phases)
    else:
        path = plot_runs(args.runs, args.out or SEVERAL_RUNS_OUT, args.phases)
    print(path)
    return path


if __name__ == "__main__":
    sys.exit(run(main))
