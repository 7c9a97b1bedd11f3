"""Seeds as a sweep axis: the mean ± standard error over seeds of every other override combination of a sweep.

The repeat axis is the ``seed`` override (a training seed: a ``src/train.py -m seed=0,1,2`` sweep, or the training
seed of the runs an evaluation sweep scored) and the ``seeds`` override (the first image seed of an evaluation).
All other overrides define a group; per group and metric, over the n jobs that succeeded,

    mean = Σ y_i / n,    s.e. = s / √n,    s² = Σ (y_i − mean)² / (n − 1)   (undefined for n = 1: left blank).

A job that failed stays out of the mean and is counted in the group's ``failed`` column, so a study where one seed
crashed still reports the others with their n. Averaging runs trained on different data sets would mix metrics
that do not compare: ``aggregate`` refuses it with an error that names both data sets and a run of each.
"""
import math
from dataclasses import dataclass
from pathlib import Path

SEED_KEYS = ("seed", "seeds")
LAUNCH_KEYS = ("launcher", "hydra.launcher.n_jobs")  # how a job was run, not what it computed (as conf/hydra's dirs)


def standard_error(values: list[float]) -> float:
    """s / √n with the sample standard deviation s (n − 1 in the denominator); nan when n < 2."""
    n = len(values)
    if n < 2:
        return math.nan
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def has_seed_axis(jobs) -> bool:
    """Whether some seed override takes two or more values among the jobs."""
    return any(len({j.overrides.get(k) for j in jobs if k in j.overrides}) > 1 for k in SEED_KEYS)


def group_overrides(job) -> dict[str, str]:
    """The overrides that define the job's group: all but the seeds, the launcher, and the run path (``ckpt``) of
    an evaluation whose training overrides are known (they say what the run was)."""
    return {k: v for k, v in job.overrides.items()
            if k not in SEED_KEYS + LAUNCH_KEYS and not (k == "ckpt" and job.run_overrides)}


def swept_axes(jobs) -> list[str]:
    """The keys of ``group_overrides`` that take two or more values among the jobs (a key some jobs lack counts
    its absence as a value), in order of first appearance: the axes of a sweep's table, without the seeds."""
    keys = dict.fromkeys(k for j in jobs for k in group_overrides(j))
    return [k for k in keys if len({group_overrides(j).get(k) for j in jobs}) > 1]


def mean_se_text(mean: float, se: float | None) -> str:
    """"mean ± s.e." as a paper prints it: the s.e. to two significant digits, the mean to the same decimal place
    but to at most five significant digits (2.5, 0.6455 → "2.50 ± 0.65"; 586.2386, 0.0013 → "586.24 ± 0.0013");
    the mean alone, to four significant digits, without an s.e.; an s.e. of float rounding (≤ 1e-12·|mean|) is 0."""
    if se is None or not math.isfinite(se):
        return f"{mean:.4g}"
    if se <= 1e-12 * abs(mean):  # equal values up to float rounding
        return f"{mean:.4g} ± 0"
    places = 1 - math.floor(math.log10(se))
    mean_places = min(places, 4 - math.floor(math.log10(abs(mean)))) if mean else places

    def fixed(value: float, digits: int) -> str:
        return f"{value:.{digits}f}" if digits > 0 else f"{round(value, digits):.0f}"

    return f"{fixed(mean, mean_places)} ± {fixed(se, places)}"


def check_one_dataset(jobs) -> None:
    """Raise ValueError when the trained runs of ``jobs`` come from more than one data set."""
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.dataset is not None:
            seen.setdefault(job.dataset, job.run_dir or job.directory)
    if len(seen) > 1:
        (a, run_a), (b, run_b) = list(seen.items())[:2]
        raise ValueError(f"cannot average runs of different data sets: {a} ({run_a}) and {b} ({run_b}); "
                         f"study one data set at a time (one study or sweep per data set)")


@dataclass
class Group:
    overrides: dict[str, str]
    jobs: list

    @property
    def ok(self) -> list:
        return [j for j in self.jobs if j.ok]

    def values(self, metric: str) -> list[float]:
        return [y for j in self.ok if (y := j.scalar(metric)) is not None and math.isfinite(y)]

    def mean(self, metric: str) -> float | None:
        ys = self.values(metric)
        return sum(ys) / len(ys) if ys else None

    def se(self, metric: str) -> float | None:
        ys = self.values(metric)
        return standard_error(ys) if ys else None


def groups(jobs) -> list[Group]:
    """The jobs grouped by ``group_overrides``, groups in order of first appearance."""
    found: dict[tuple, Group] = {}
    for job in jobs:
        overrides = group_overrides(job)
        found.setdefault(tuple(sorted(overrides.items())), Group(overrides, [])).jobs.append(job)
    return list(found.values())


def aggregate(jobs, metrics: list[str]) -> tuple[list[str], list[list]]:
    """(header, rows) of the mean table: the group's overrides, n (jobs that succeeded), failed, then
    ``<metric>_mean`` and ``<metric>_se`` for each metric."""
    check_one_dataset(jobs)
    found = groups(jobs)
    keys = list(dict.fromkeys(k for g in found for k in g.overrides))
    header = [*keys, "n", "failed", *(f"{m}_{s}" for m in metrics for s in ("mean", "se"))]
    table = []
    for g in found:
        cells = [g.overrides.get(k) for k in keys] + [len(g.ok), len(g.jobs) - len(g.ok)]
        for m in metrics:
            se = g.se(m)
            cells += [g.mean(m), None if se is None or math.isnan(se) else se]
        table.append(cells)
    return header, table


def mean_markdown_table(header: list[str], table: list[list], metrics: list[str]) -> tuple[list[str], list[list]]:
    """The mean table with each metric's pair of columns as one "mean ± s.e." cell."""
    first = header.index(f"{metrics[0]}_mean") if metrics else len(header)
    out_header, out = header[:first] + metrics, []
    for row in table:
        cells = row[:first]
        for k in range(len(metrics)):
            mean, se = row[first + 2 * k], row[first + 2 * k + 1]
            cells.append("" if mean is None else mean_se_text(mean, se))
        out.append(cells)
    return out_header, out
