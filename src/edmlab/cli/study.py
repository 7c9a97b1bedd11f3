"""A design-space study in one command: a training sweep, an evaluation of every run it trained, and the table of
mean ± standard error over seeds.

    python src/study.py preconditioning=edm,vp,ve seed=0,1,2 duration_kimg=50 --eval num_samples=1000

Trains into DIR/train, evaluates every run that finished into DIR/eval and writes DIR/study.md, study.csv,
study_mean.md, study_mean.csv and the plots (``edmlab.evaluation.study``). Exit code 0 when every run trained and
was evaluated, 1 when some failed (they are failed rows), 2 for bad input (one line ``error: ...``) or nothing to
aggregate.
"""
import sys
import time
from pathlib import Path

from edmlab.cli.common import parser, run
from edmlab.evaluation.study import study


def parse_args(argv: list[str] | None):
    cli = parser(__doc__, prog="python src/study.py")
    cli.add_argument("train", nargs="*", help="overrides of src/train.py (sweeps: key=a,b,c)")
    cli.add_argument("--eval", nargs="*", default=[], dest="eval", metavar="OVERRIDE", help="overrides of src/eval.py")
    cli.add_argument("--dir", default=None, help="the study directory (default: outputs/study/<date_time>)")
    cli.add_argument("--jobs", type=int, default=1, help="jobs run at a time (joblib launcher when > 1)")
    args = cli.parse_args(argv)
    if args.jobs < 1:
        cli.error(f"--jobs={args.jobs} must be >= 1")
    if any(o.split("=", 1)[0].lstrip("+") in ("hydra.sweep.dir", "ckpt") for o in args.train + args.eval):
        cli.error("the study sets hydra.sweep.dir and ckpt itself: choose the folder with --dir")
    return args


def start(argv: list[str] | None) -> int:
    """Parse, then run the study; raises ValueError for a --dir that is not a directory."""
    args = parse_args(argv)
    directory = Path(args.dir or f"outputs/study/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--dir {directory} is a file: give a directory for the study (created if missing)")
    return study(args.train, args.eval, directory, args.jobs)


def main(argv: list[str] | None = None) -> int:
    """The command's exit code (src/study.py exits with it)."""
    return run(start, argv)


if __name__ == "__main__":
    sys.exit(main())
