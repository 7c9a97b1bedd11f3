"""The plots of a sweep: the primary metric against each numeric swept axis, ``<metric>_vs_<axis>.png``, one line
per combination of the other swept values (e.g. per solver), means with s.e. bars where seeds repeat a point; and
``<metric>_mean.png``, the mean ± s.e. of every group of a seed sweep.

An axis is plotted only when it was swept: ``sampler.num_steps`` or ``sampler.nfe`` (x: the NFE the jobs
measured, ``_vs_nfe``), ``sampler.rho`` (``_vs_rho``), ``ema.std`` (``_vs_std``), ``guidance`` (``_vs_guidance``),
or any other override that took two or more numeric values (``_vs_<its last name>``). A solver sweep at one
``num_steps`` gives no NFE plot, though its jobs' NFE differ: the pivot table holds it.
"""
import math
from pathlib import Path

from edmlab.evaluation.sweep_jobs import Job, as_number
from edmlab.evaluation.sweep_mean import Group, standard_error, swept_axes

NFE_KEYS = ("num_steps", "nfe")  # sampler.nfe=5,6,… sweeps set nfe itself
X_LABELS = {"rho": "ρ (EDM time-step exponent)", "nfe": "NFE (denoiser evaluations)",
            "std": "EMA σ_rel (post-hoc, ema.std)", "guidance": "guidance weight w"}


def last_name(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def plot_axes(jobs: list[Job]) -> dict[str, list[str]]:
    """{plot name: the swept override keys it puts on x}: ``nfe`` for num_steps/nfe axes, else each numeric axis's
    last name (its full key, dots as ``_``, when two axes share a last name)."""
    numeric = [k for k in swept_axes(jobs)
               if all(as_number(j.overrides[k]) is not None for j in jobs if k in j.overrides)]
    names = [last_name(k) for k in numeric]
    found: dict[str, list[str]] = {}
    for key, name in zip(numeric, names):
        name = "nfe" if name in NFE_KEYS else name if names.count(name) == 1 else key.replace(".", "_")
        found.setdefault(name, []).append(key)
    return found


def plot_metric(jobs: list[Job], metric: str, name: str, keys: list[str], path: Path) -> Path | None:
    """``metric`` against the axis ``name`` (override ``keys``; x is the measured NFE for ``nfe``) for the
    successful jobs, one line per combination of the other swept axes; None when x takes fewer than two values."""
    x_of = (lambda j: j.scalar("nfe")) if name == "nfe" else (lambda j: as_number(j.overrides.get(keys[0])))
    points = [(j, x_of(j), j.scalar(metric)) for j in jobs if j.ok]
    points = [(j, x, y) for j, x, y in points if x is not None and y is not None and math.isfinite(y)]
    if len({x for _, x, _ in points}) < 2:
        return None
    varying = [k for k in swept_axes([j for j, _, _ in points]) if k not in keys]
    series: dict[str, dict] = {}  # label → x → the values over seeds
    for job, x, y in points:
        label = ", ".join(f"{k}={job.overrides.get(k)}" for k in varying) or metric
        series.setdefault(label, {}).setdefault(x, []).append(y)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    colors = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    for index, (label, by_x) in enumerate(series.items()):
        xs = sorted(by_x)
        se = [standard_error(by_x[x]) for x in xs]
        ax.errorbar(xs, [sum(by_x[x]) / len(by_x[x]) for x in xs], fmt="o-", color=colors(index % colors.N),
                    label=label, capsize=3, yerr=None if all(math.isnan(e) for e in se) else
                    [0.0 if math.isnan(e) else e for e in se])
    xs = sorted({x for _, x, _ in points})
    if all(y > 0 for _, _, y in points):
        ax.set_yscale("log")
    if xs[0] > 0 and xs[-1] >= 4 * xs[0]:
        ax.set_xscale("log")
    ticks = [xs[0]]
    for x in xs[1:]:  # the swept values as ticks, but none closer than ~1/12 of the axis to the previous one
        gap = math.log(x / ticks[-1]) / math.log(xs[-1] / xs[0]) if ax.get_xscale() == "log" else \
            (x - ticks[-1]) / (xs[-1] - xs[0])
        if gap > 1 / 12:
            ticks.append(x)
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(X_LABELS.get(name, keys[0]))
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.3)
    if len(series) > 6:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_axis_metrics(jobs: list[Job], metric: str, directory: Path) -> list[Path]:
    """``<metric>_vs_<axis>.png`` in ``directory`` for every numeric swept axis (``plot_axes``)."""
    paths = [plot_metric(jobs, metric, name, keys, directory / f"{metric}_vs_{name}.png")
             for name, keys in plot_axes(jobs).items()]
    return [p for p in paths if p is not None]


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
