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
            cells.append("" if mean is None else f"{mean:.4g}" + ("" if se is None else f" ± {se:.2g}"))
        out.append(cells)
    return out_header, out


def plot_groups(found: list[Group], metric: str, path: Path) -> Path | None:
    """``metric`` mean ± s.e. per group (one point with its error bar per override combination, n in the label);
    None when no group has a value."""
    points = [(g, g.mean(metric), g.se(metric)) for g in found]
    points = [(g, m, 0.0 if s is None or math.isnan(s) else s) for g, m, s in points if m is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varying = [k for k in dict.fromkeys(k for g, _, _ in points for k in g.overrides)
               if len({g.overrides.get(k) for g, _, _ in points}) > 1]
    labels = [", ".join(f"{k}={g.overrides.get(k)}" for k in varying) + f" (n={len(g.values(metric))})"
              for g, _, _ in points]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(points) + 2), 4), dpi=110)
    xs = list(range(len(points)))
    ax.errorbar(xs, [m for _, m, _ in points], yerr=[s for _, _, s in points], fmt="o", capsize=4)
    ax.set_xticks(xs, labels, rotation=30 if len(points) > 3 else 0, ha="right" if len(points) > 3 else "center",
                  fontsize=8)
    ax.set_ylabel(f"{metric} (mean ± s.e. over seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
