"""``python -m edmlab.cli.loss_curves``: EDM Fig. 5a: the training loss per noise level σ, from a run's CSV log (``csv/metrics.csv``)."""
import argparse
from edmlab.viz.loss_curves import plot_run, plot_runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edmlab.cli.loss_curves",
                                     description="EDM Fig. 5a: loss per σ of training runs (their csv/metrics.csv).")
    parser.add_argument("runs", nargs="+", help="run directories of src/train.py")
    parser.add_argument("--out", default=None, help="the PNG (one run: <run>/loss_per_sigma.png; several: "
                                                    "outputs/figures/loss_per_sigma.png)")
    parser.add_argument("--phases", type=int, default=4, help="spans of training drawn (one run) / the last of")
    args = parser.parse_args(argv)
    if args.phases < 1:
        parser.error(f"--phases={args.phases} must be >= 1")
    try:
        if len(args.runs) == 1:
            path = plot_run(args.runs[0], args.out, args.phases)
        else:
            path = plot_runs(args.runs, args.out or "outputs/figures/loss_per_sigma.png", args.phases)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    print(path)


if __name__ == "__main__":
    main()
