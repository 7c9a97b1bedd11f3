"""torch's thread counts: how many cores this process really has, its share of them, and a block run with a count.

Two processes that each run one intra-op thread per core of a 2-core machine do not share it at half speed each:
their OpenMP workers spin while waiting for each other and both fall ~6× (docs/results/threads_and_startup.md). So every
process takes ``cores / parallel jobs`` threads, and ``OMP_NUM_THREADS`` set by the user wins."""
import contextlib
import math
import os
from pathlib import Path

import torch


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (``cpu.max``
    "<quota> <period>", as a container's ``--cpus``) where one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def thread_share(parallel_jobs: int = 1, environ=os.environ) -> int:
    """Intra-op threads for one of ``parallel_jobs`` processes sharing this machine: ``OMP_NUM_THREADS`` when the
    user set it, else max(1, cores // parallel_jobs)."""
    given = environ.get("OMP_NUM_THREADS", "").strip()
    if given:
        try:
            if int(given) >= 1:
                return int(given)
        except ValueError:
            pass
        raise ValueError(f"OMP_NUM_THREADS={given!r} must be a positive integer (or unset)")
    if isinstance(parallel_jobs, bool) or not isinstance(parallel_jobs, int) or parallel_jobs < 1:
        raise ValueError(f"parallel jobs must be an integer >= 1, got {parallel_jobs!r}")
    return max(1, available_cores() // parallel_jobs)


def share_threads(threads: int | None = None, parallel_jobs: int = 1) -> int:
    """Set torch's intra-op (and, once, inter-op) threads to ``threads`` (None: ``thread_share(parallel_jobs)``) and
    ``OMP_NUM_THREADS`` to the same count, which Lightning's launchers and child processes read (without it
    Lightning sets torch back to all cores / processes); returns the count set."""
    count = thread_share(parallel_jobs) if threads is None else int(threads)
    if count < 1:
        raise ValueError(f"threads={threads!r} must be >= 1 (or null: the cores this job may use)")
    torch.set_num_threads(count)
    os.environ["OMP_NUM_THREADS"] = str(count)  # Lightning's launcher resets torch's threads unless it is set
    with contextlib.suppress(RuntimeError):  # inter-op threads can be set only before the first parallel work
        torch.set_num_interop_threads(count)
    return count


@contextlib.contextmanager
def num_threads(n: int | None):
    """``torch.set_num_threads(n)`` inside the block (None: unchanged), the caller's count restored after. Tiny
    tensor operations (point clouds, the exact ODE solve, 8×8 digits) run fastest on one thread: intra-op threads
    only add overhead there, and on a shared machine they wait on each other."""
    threads = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
