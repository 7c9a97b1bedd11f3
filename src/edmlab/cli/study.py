"""``python -m edmlab.cli.study``: a design-space study in one command: a training sweep, an evaluation of every run it trained, and the table of
mean ± standard error over seeds."""
import argparse
import sys
import time
from pathlib import Path
from edmlab.evaluation.study import study


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python src/study.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", nargs="*", help="overrides of src/train.py (sweeps: key=a,b,c)")
    parser.add_argument("--eval", nargs="*", default=[], dest="eval", help="overrides of src/eval.py")
    parser.add_argument("--dir", default=None, help="the study directory (default outputs/study/<date_time>)")
    parser.add_argument("--jobs", type=int, default=1, help="jobs run at a time (joblib launcher when > 1)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs} must be >= 1")
    if any(o.split("=", 1)[0].lstrip("+") in ("hydra.sweep.dir", "ckpt") for o in args.train + args.eval):
        parser.error("the study sets hydra.sweep.dir and ckpt itself: choose the folder with --dir")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    directory = Path(args.dir or f"outputs/study/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    return study(args.train, args.eval, directory, args.jobs)


if __name__ == "__main__":
    main()
