"""Two trainings side by side on one machine: summed images/s against one training alone, with torch's threads
left at their default (every process one intra-op thread per core) and shared (``edmlab.infra.threads``: cores /
parallel jobs each, what train and eval runs do in a parallel sweep).

Each training is the real Lightning loop of ``benchmarks/train_throughput.py`` (digits_small on the 8×8 digits, batch
128, CPU), timed after ``--warmup`` steps, in its own process. Run it on an otherwise idle machine:

    .venv/bin/python benchmarks/cotenancy.py [--steps 60] [--warmup 10]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args) -> None:
    sys.path.insert(0, str(HERE))
    from train_throughput import config, lightning_loop

    from edmlab.infra.threads import share_threads, thread_share

    threads = share_threads(args.threads if args.threads else thread_share(args.jobs))
    with tempfile.TemporaryDirectory() as tmp:
        rate = lightning_loop(config(128, args.warmup + args.steps, tmp), args.warmup)
    print(json.dumps({"threads": threads, "img_per_s": rate}), flush=True)


def run(processes: int, jobs: int, threads: int | None, args) -> list[dict]:
    """``processes`` workers at once, each told it is one of ``jobs`` parallel jobs (or given ``threads``)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    command = [sys.executable, __file__, "--worker", "--jobs", str(jobs), "--steps", str(args.steps),
               "--warmup", str(args.warmup)] + (["--threads", str(threads)] if threads else [])
    started = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(processes)]
    results = []
    for p in started:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps per training")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all three scenarios (medians reported)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from edmlab.infra.threads import available_cores

    cores = available_cores()
    scenarios = [("one training alone", 1, 1, None), ("two side by side, default threads", 2, 1, cores),
                 ("two side by side, shared threads (cores / 2 each)", 2, 2, None)]
    sums = {name: [] for name, *_ in scenarios}
    threads, each = {}, {name: [] for name, *_ in scenarios}
    for _ in range(args.rounds):  # the scenarios interleaved, so that a burst of other load hits all of them
        for name, processes, jobs, count in scenarios:
            results = run(processes, jobs, count, args)
            sums[name].append(sum(r["img_per_s"] for r in results))
            each[name] += [r["img_per_s"] for r in results]
            threads[name] = ", ".join(str(r["threads"]) for r in results)
    base = statistics.median(sums["one training alone"])
    print(f"# Co-tenancy on {cores} cores: summed training images/s (digits_small, batch 128, {args.steps} steps), "
          f"medians of {args.rounds} rounds\n")
    print("| runs | threads each | median img/s per process | median summed img/s | summed / alone |")
    print("|---|---|---|---|---|")
    for name, *_ in scenarios:
        total = statistics.median(sums[name])
        print(f"| {name} | {threads[name]} | {statistics.median(each[name]):.0f} | {total:.0f} | {total / base:.2f}× |")

if __name__ == "__main__":
    main()
