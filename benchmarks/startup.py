"""Start-up cost of a training run: the wall time of ``python src/train.py trainer.max_steps=1`` (compose, build,
one step, last.ckpt, network.pt, the final report, the end-of-run summary) against that of
``python -c "import torch, lightning"``, the floor any Lightning script pays (Lightning's import pulls in torchmetrics
and torchvision). Both run one after the other in each repeat, so they share the machine's load; the table gives
their medians and the ratio.

    python benchmarks/startup.py [--repeats 3] [--threads N] [-- extra src/train.py overrides ...]

The runs land in a temporary directory (removed afterwards). Measure on a quiet machine: two torch processes on two
cores slow each other down several times (torch's intra-op threads wait on each other: a 1-step run measured 40 s
with 2 threads beside another training process, 7.6 s with --threads 1), so the 1-minute load average is printed
with the table. ``--threads N`` sets OMP_NUM_THREADS for both commands.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT = [sys.executable, "-c", "import torch, lightning"]
TRAIN = [sys.executable, str(ROOT / "src" / "train.py"), "trainer.max_steps=1"]


def wall_time(command: list[str], cwd: Path, env: dict | None = None) -> float:
    """Seconds ``command`` takes from start to exit; a failing command stops the benchmark with its stderr."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def measure(repeats: int, extra: list[str], threads: int | None = None) -> dict[str, list[float]]:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    times = {"import": [], "train": []}
    with tempfile.TemporaryDirectory(prefix="edmlab_startup_") as folder:
        for k in range(repeats):
            times["import"].append(wall_time(IMPORT, Path(folder), env))
            times["train"].append(wall_time([*TRAIN, f"hydra.run.dir=run_{k}", *extra], Path(folder), env))
    return times


def table(times: dict[str, list[float]], extra: list[str]) -> str:
    train = " ".join(["python src/train.py trainer.max_steps=1", *extra])
    rows = [("`python -c \"import torch, lightning\"`", times["import"]), (f"`{train}`", times["train"])]
    lines = ["| command | runs | median s | min s | max s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {len(t)} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} |" for name, t in rows]
    ratio = statistics.median(times["train"]) / statistics.median(times["import"])
    lines += ["", f"train / import (medians): {ratio:.2f}×; load average (1 min) at the end: {os.getloadavg()[0]:.2f}"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of both commands (default: inherit)")
    parser.add_argument("extra", nargs="*", help="more src/train.py overrides (after --)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads={args.threads} must be >= 1")
    print(f"load average (1 min) at the start: {os.getloadavg()[0]:.2f}"
          + (f"; OMP_NUM_THREADS={args.threads}" if args.threads else ""))
    print(table(measure(args.repeats, args.extra, args.threads), args.extra))


if __name__ == "__main__":
    main()
