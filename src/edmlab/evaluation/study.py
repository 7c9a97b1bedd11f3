"""A design-space study in one command: a training sweep, an evaluation of every run it trained, and the table of
mean ± standard error over seeds.

    python src/study.py [training overrides ...] [--eval evaluation overrides ...] [--dir DIR] [--jobs N]
    python src/study.py preconditioning=edm,vp,ve seed=0,1,2 duration_kimg=50 --eval num_samples=1000

1. ``src/train.py -m <training overrides>`` into ``DIR/train`` (its own sweep report there);
2. ``src/eval.py -m ckpt=<each run that finished> <evaluation overrides>`` into ``DIR/eval``; every evaluation job
   carries its run's training overrides (``edmlab.evaluation.sweep``), so the seeds of training are the repeat axis;
3. ``DIR/study.csv`` / ``study.md`` (one row per run, training failures included as failed rows) and
   ``DIR/study_mean.csv`` / ``study_mean.md`` / ``<metric>_mean.png`` (mean ± s.e. over seeds with n per row); both
   markdown files lead with the pivot of the swept axes, mean ± s.e. over seeds per cell and the real-data floor
   as a last row (``edmlab.evaluation.sweep_tables``).

A run that fails to train or to evaluate is a failed row and the others are kept; the command then exits 1.
Runs of different data sets are not averaged: the study stops with an error naming both (exit 2).
Default DIR: ``outputs/study/<date_time>``. ``--jobs N`` runs N jobs at a time (``+launcher=joblib``).
"""
import subprocess
import sys
from pathlib import Path

from edmlab.evaluation.sweep import write_report
from edmlab.evaluation.sweep_jobs import Job, parse_override, read_jobs

SRC = Path(__file__).resolve().parents[2]


def hydra_quote(path: Path) -> str:
    """A path as one quoted Hydra value (run dirs hold '=' and ',')."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def launcher(jobs: int) -> list[str]:
    return ["+launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []


def run_step(script: str, overrides: list[str]) -> int:
    command = [sys.executable, str(SRC / script), "-m", *overrides]
    print(f"study: {' '.join(command[1:])}", flush=True)
    return subprocess.run(command).returncode


def finished(job: Job) -> bool:
    return (job.directory / "network.pt").is_file()


def study(train: list[str], evaluate: list[str], directory: Path, jobs: int = 1) -> int:
    """Train, evaluate, aggregate; the exit code (0 all ran, 1 some run failed, 2 nothing to aggregate)."""
    directory.mkdir(parents=True, exist_ok=True)
    code = run_step("train.py", [*train, *launcher(jobs), f"hydra.sweep.dir={directory / 'train'}"])
    trained = read_jobs(directory / "train") if (directory / "train").is_dir() else []
    if not trained:
        print(f"error: the training sweep ended with exit code {code} and no run (see above)", file=sys.stderr)
        return 2
    runs = [j for j in trained if j.ok and finished(j)]
    failed_training = [j for j in trained if not (j.ok and finished(j))]
    planned = dict(parse_override(o) for o in evaluate)
    for job in failed_training:  # the evaluation it would have had, so that its row groups with the others
        job.overrides = {**job.overrides, **planned}
        job.record = {**job.record, "status": "failed",
                      "error": job.record.get("error") or "training did not finish (no network.pt; see its log)"}
    evaluated = []
    if runs:
        ckpt = "ckpt=" + ",".join(hydra_quote(j.directory.resolve()) for j in runs)
        run_step("eval.py", [ckpt, *evaluate, *launcher(jobs), f"hydra.sweep.dir={directory / 'eval'}"])
        evaluated = read_jobs(directory / "eval") if (directory / "eval").is_dir() else []
    try:
        report = write_report(directory, jobs=evaluated + failed_training, name="study")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.text())
    print(f"study report: {directory / 'study.md'} ({len(report.jobs)} runs, {len(report.failed)} failed)")
    return 1 if report.failed else 0
