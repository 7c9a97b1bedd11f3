"""The end-of-sweep report: a Hydra callback that, when a multirun ends, gathers the ``metrics.json`` of every job
directory of the sweep into one table and plots the primary metric.

Written into the sweep directory: ``sweep.csv`` and ``sweep.md`` (one row per job: the job number, its overrides,
then its scalar metrics, ``nfe``, ``status`` and ``error``), ``<metric>_vs_rho.png`` when ρ varies and
``<metric>_vs_nfe.png`` when the number of steps varies (likewise ``_vs_std`` for a post-hoc EMA sweep
``ema.std=...`` and ``_vs_guidance`` for ``guidance=...``), one line per combination of the other swept values
(e.g. per solver). The primary metric is the first one present of ``PRIMARY_METRICS``.

Failed jobs stay in the table (``status: failed`` with their error; a job directory without ``metrics.json``
counts as failed). When any job failed the report says so on stderr and ends the process with exit code 1,
after writing everything (``exit_on_failure=false`` keeps exit code 0).

Seeds are a sweep axis (``edmlab.evaluation.sweep_mean``): when ``seed`` or ``seeds`` takes several values, ``sweep_mean.csv``
and ``sweep_mean.md`` hold the mean ± standard error over seeds of every other override combination with its n, and
the plots show means with error bars. An evaluation job of a trained run (``ckpt=<run dir>``) carries the run's
training overrides (its ``.hydra/overrides.yaml``; the evaluation's own win where both set a key), so an evaluation
sweep over the runs of a ``seed=0,1,2`` training sweep averages over the training seeds.
"""
import csv
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback

from edmlab.evaluation.sweep_mean import (aggregate, group_overrides, groups, has_seed_axis, mean_markdown_table, plot_groups,
                         standard_error)

PRIMARY_METRICS = ("fid", "fd_dinov2", "digits_fd", "mixture_ode_error", "mixture_sliced_wasserstein")
NOT_METRICS = {"nfe", "job_num", "status", "error"}
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


@dataclass
class Job:
    """One job directory of a sweep: its number, its overrides (key → value) and its metrics.json record."""

    directory: Path
    num: int | None
    overrides: dict[str, str]
    record: dict = field(default_factory=dict)
    run_dir: Path | None = None
    run_overrides: dict[str, str] = field(default_factory=dict)
    dataset: str | None = None

    @property
    def status(self) -> str:
        return str(self.record.get("status", "ok"))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def scalar(self, key: str) -> float | None:
        return as_number(self.record.get(key))

    def setting(self, name: str) -> float | str | None:
        """A sampler setting (``rho``, ``num_steps``, ``solver``): from the job's config summary, else its overrides."""
        value = (self.record.get("config") or {}).get(name)
        if value is None:
            value = next((v for k, v in self.overrides.items() if k.rsplit(".", 1)[-1] == name), None)
        number = as_number(value)
        return number if number is not None else value


def as_number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        if value in NON_FINITE:
            return NON_FINITE[value]
        try:
            return float(value)
        except ValueError:
            return None
    return None


def parse_override(text: str) -> tuple[str, str]:
    """``key=value`` of a Hydra override, without its ``+``/``~`` prefix and the escapes Hydra adds (``bench\\:x``)."""
    key, _, value = str(text).partition("=")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return key.lstrip("+~"), value[1:-1]
    return key.lstrip("+~"), re.sub(r"\\(.)", r"\1", value)


def trained_run(directory: Path, overrides: dict[str, str]) -> Path | None:
    """The training run of a job: the job itself when it trained (its config.yaml), else the run dir that its
    ``ckpt`` names (a run dir, its network.pt or checkpoints/last.ckpt); None for ``bench:*`` and bare files."""
    if (directory / "config.yaml").is_file() and dataset_name(directory) is not None:
        return directory
    ckpt = overrides.get("ckpt")
    if not ckpt or ckpt.startswith("bench:"):
        return None
    path = Path(ckpt)
    path = path.parent.parent if path.parent.name == "checkpoints" else path if path.is_dir() else path.parent
    return path if (path / "config.yaml").is_file() else None


def dataset_name(run: Path) -> str | None:
    """The data set a run trained on, from its resolved config.yaml: the dataset class with its preset/path/root."""
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(run / "config.yaml").get("data") or {}, resolve=False)
    except (OSError, ValueError) as e:
        return f"unreadable config.yaml ({e})"
    if not data:
        return None
    dataset = data.get("dataset") or {}
    name = str(dataset.get("_target_", "?")).rsplit(".", 1)[-1]
    where = [f"{k}={dataset[k]}" for k in ("preset", "path", "root") if dataset.get(k) is not None]
    return f"{name}({', '.join(where)})" if where else name


def read_job(directory: Path) -> Job | None:
    """The job of a sweep subdirectory, or None when it is not a job directory."""
    import json

    metrics_file, overrides_file = directory / "metrics.json", directory / ".hydra" / "overrides.yaml"
    if not metrics_file.is_file() and not overrides_file.is_file():
        return None
    record = {}
    if metrics_file.is_file():
        try:
            record = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as e:
            record = {"status": "failed", "error": f"unreadable metrics.json ({e})"}
    else:
        record = {"status": "failed", "error": "no metrics.json: the job did not finish (see its log)"}
    overrides = record.get("overrides")
    if overrides is None and overrides_file.is_file():
        from omegaconf import OmegaConf

        overrides = list(OmegaConf.load(overrides_file))
    num = record.get("job_num")
    if num is None:
        match = re.match(r"(\d+)(_|$)", directory.name)
        num = int(match.group(1)) if match else None
    own = dict(parse_override(o) for o in overrides or [])
    run = trained_run(directory, own)
    run_overrides = {}
    if run is not None and run != directory and (run / ".hydra" / "overrides.yaml").is_file():
        from omegaconf import OmegaConf

        run_overrides = dict(parse_override(o) for o in OmegaConf.load(run / ".hydra" / "overrides.yaml"))
    return Job(directory, num, {**run_overrides, **own}, record, run, run_overrides,
               dataset_name(run) if run is not None else None)


def read_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job directory directly under ``sweep_dir``, in job order."""
    jobs = [job for d in sorted(Path(sweep_dir).iterdir()) if d.is_dir() and (job := read_job(d)) is not None]
    return sorted(jobs, key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.directory.name))


def primary_metric(jobs: list[Job]) -> str | None:
    present = {k for j in jobs for k in j.record}
    return next((m for m in PRIMARY_METRICS if m in present), None)


def columns(jobs: list[Job]) -> tuple[list[str], list[str]]:
    """(override keys, metric keys): each in order of first appearance, the primary metric first."""
    keys, metrics = [], []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
        metrics += [k for k, v in job.record.items()
                    if k not in NOT_METRICS and k not in metrics and as_number(v) is not None]
    metrics = [m for m in metrics if m not in keys]
    primary = primary_metric(jobs)
    if primary in metrics:
        metrics.remove(primary)
        metrics.insert(0, primary)
    return keys, metrics


def rows(jobs: list[Job]) -> tuple[list[str], list[list]]:
    keys, metrics = columns(jobs)
    header = ["job", *keys, *metrics, "nfe", "status", "error"]
    table = [[job.num, *(job.overrides.get(k) for k in keys), *(job.scalar(m) for m in metrics),
              job.scalar("nfe") if job.ok else None, job.status, job.record.get("error")] for job in jobs]
    return header, table


def fixed_overrides(jobs: list[Job]) -> dict[str, str]:
    """The overrides every job shares (when there are several jobs): shown once above the markdown table."""
    if len(jobs) < 2:
        return {}
    first = jobs[0].overrides
    return {k: v for k, v in first.items() if all(j.overrides.get(k) == v and k in j.overrides for j in jobs)}


def drop_columns(header: list[str], table: list[list], names) -> tuple[list[str], list[list]]:
    keep = [i for i, name in enumerate(header) if name not in names]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in table]


def write_csv(path: Path, header: list[str], table: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in table])
    return path


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def markdown(header: list[str], table: list[list], title: str = "") -> str:
    numeric = [any(isinstance(row[i], (int, float)) for row in table)
               and all(isinstance(row[i], (int, float)) or row[i] is None for row in table) for i in range(len(header))]
    lines = [f"{title}\n" if title else ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table]
    return "\n".join(lines).lstrip("\n") + "\n"


def plot_metric(jobs: list[Job], metric: str, x_name: str, path: Path) -> Path | None:
    """``metric`` against ``x_name`` ("rho", "nfe", "std" or "guidance") for the successful jobs, one line per
    combination of the other overrides that vary (e.g. per solver); None when x does not vary."""
    x_of = (lambda j: j.scalar("nfe")) if x_name == "nfe" else (lambda j: as_number(j.setting(x_name)))
    x_keys = ("num_steps", "nfe") if x_name == "nfe" else (x_name,)  # sampler.nfe=5,6,… sweeps set nfe itself
    points = [(j, x_of(j), j.scalar(metric)) for j in jobs if j.ok]
    points = [(j, x, y) for j, x, y in points if x is not None and y is not None and math.isfinite(y)]
    if len({x for _, x, _ in points}) < 2:
        return None
    varying = [k for k in dict.fromkeys(k for j, _, _ in points for k in group_overrides(j))
               if k.rsplit(".", 1)[-1] not in x_keys and len({j.overrides.get(k) for j, _, _ in points}) > 1]
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
    ax.set_xlabel({"rho": "ρ (EDM time-step exponent)", "nfe": "NFE (denoiser evaluations)",
                   "std": "EMA σ_rel (post-hoc, ema.std)", "guidance": "guidance weight w"}[x_name])
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.3)
    if len(series) > 6:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


@dataclass
class Report:
    sweep_dir: Path
    jobs: list[Job]
    header: list[str]
    table: list[list]
    metric: str | None
    files: list[Path]
    mean_header: list[str] = field(default_factory=list)
    mean_table: list[list] = field(default_factory=list)

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if not j.ok]


def write_report(sweep_dir: str | Path, plots: bool = True, jobs: list[Job] | None = None,
                 name: str = "sweep") -> Report:
    """<name>.csv, <name>.md and the plots of ``jobs`` (default: the job dirs under ``sweep_dir``); with a seed
    axis also <name>_mean.csv/.md and ``<metric>_mean.png``. Raises ValueError (after writing <name>.csv/.md)
    when the seeds are to be averaged over runs of different data sets."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir) if jobs is None else jobs
    header, table = rows(jobs)
    metric = primary_metric(jobs)
    failed = sum(not j.ok for j in jobs)
    fixed = fixed_overrides(jobs)
    title = (f"# Sweep {sweep_dir.name}\n\n{len(jobs)} jobs, {failed} failed. "
             f"Primary metric: {metric or 'none'} (lower is better)."
             + (f" Fixed: {', '.join(f'`{k}={v}`' for k, v in fixed.items())}." if fixed else ""))
    files = [write_csv(sweep_dir / f"{name}.csv", header, table)]
    (sweep_dir / f"{name}.md").write_text(markdown(*drop_columns(header, table, fixed), title))
    files.append(sweep_dir / f"{name}.md")
    report = Report(sweep_dir, jobs, header, table, metric, files)
    if has_seed_axis(jobs):
        metrics = columns(jobs)[1]
        report.mean_header, report.mean_table = aggregate(jobs, metrics)
        files.append(write_csv(sweep_dir / f"{name}_mean.csv", report.mean_header, report.mean_table))
        mean_title = (f"# Sweep {sweep_dir.name}: mean ± standard error over seeds\n\n"
                      f"n = jobs that succeeded per row, failed = jobs of the row that failed (in {name}.csv).")
        mean_md = mean_markdown_table(*drop_columns(report.mean_header, report.mean_table, fixed), metrics)
        (sweep_dir / f"{name}_mean.md").write_text(markdown(*mean_md, mean_title))
        files.append(sweep_dir / f"{name}_mean.md")
        if plots and metric is not None and (path := plot_groups(groups(jobs), metric,
                                                                 sweep_dir / f"{metric}_mean.png")) is not None:
            files.append(path)
    if plots and metric is not None:
        for x_name in ("rho", "nfe", "std", "guidance"):
            path = plot_metric(jobs, metric, x_name, sweep_dir / f"{metric}_vs_{x_name}.png")
            if path is not None:
                files.append(path)
    return report


def log_report_to_wandb(report: Report, config) -> None:
    """The table and the plots into an offline W&B run in the sweep directory (skipped with ``logger=none``)."""
    from omegaconf import OmegaConf

    if not OmegaConf.select(config, "logger.wandb", default=None):
        return
    import wandb

    task = OmegaConf.select(config, "task_name", default="sweep")
    offline = OmegaConf.select(config, "logger.wandb.offline", default=True)
    run = wandb.init(mode="offline" if offline else "online", dir=str(report.sweep_dir),
                     project=OmegaConf.select(config, "logger.wandb.project", default="edmlab"), group=str(task),
                     name=f"{task}-sweep-{report.sweep_dir.name}", job_type="sweep")
    try:
        def cells(table):
            return [["" if v is None else v if isinstance(v, (int, float)) else str(v) for v in row] for row in table]

        if report.mean_table:
            run.log({"sweep/mean_over_seeds": wandb.Table(columns=report.mean_header, data=cells(report.mean_table))})
        run.log({"sweep/table": wandb.Table(columns=report.header, data=cells(report.table)),
                 **{f"sweep/{p.stem}": wandb.Image(str(p)) for p in report.files if p.suffix == ".png"}})
    finally:
        run.finish()


class SweepReport(Callback):
    """Hydra callback (``hydra.callbacks``): at the end of a multirun write the report of ``write_report`` into the
    sweep directory, log it to W&B offline (``wandb=false`` or ``logger=none`` skips it), print the table, and exit
    with code 1 if a job failed (``exit_on_failure``)."""

    def __init__(self, wandb: bool = True, plots: bool = True, exit_on_failure: bool = True):
        self.wandb, self.plots, self.exit_on_failure = wandb, plots, exit_on_failure

    def on_multirun_end(self, config, **kwargs) -> None:
        if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, one report from rank 0
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        try:
            report = write_report(sweep_dir, self.plots)
        except ValueError as e:  # runs of different data sets: sweep.csv/md are written, the mean is refused
            print(f"error: {e}", file=sys.stderr)
            sys.stdout.flush()
            raise SystemExit(1)
        if self.wandb:
            try:
                log_report_to_wandb(report, config)
            except Exception as e:  # noqa: BLE001 - the report is on disk already
                warnings.warn(f"W&B logging of the sweep report failed ({type(e).__name__}: {e})", RuntimeWarning)
        print(markdown(*drop_columns(report.header, report.table, fixed_overrides(report.jobs))))
        if report.mean_table:
            print(markdown(*mean_markdown_table(*drop_columns(report.mean_header, report.mean_table,
                                                              fixed_overrides(report.jobs)), columns(report.jobs)[1])))
        print(f"sweep report: {sweep_dir / 'sweep.md'} ({len(report.jobs)} jobs, {len(report.failed)} failed)")
        if report.failed:
            for job in report.failed:
                where = " ".join(f"{k}={v}" for k, v in job.overrides.items())
                print(f"error: sweep job {job.num} ({where}) failed: {job.record.get('error')}", file=sys.stderr)
            if self.exit_on_failure:
                sys.stdout.flush()
                raise SystemExit(1)
