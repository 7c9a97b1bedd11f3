"""The end-of-sweep report: a Hydra callback that, when a multirun ends, gathers the ``metrics.json`` of every job
directory of the sweep into tables and plots of the primary metric.

Written into the sweep directory:

- ``sweep.md``: the pivot of the primary metric over the swept axes (``edmlab.evaluation.sweep_tables``: e.g.
  solver rows × ``sampler.num_steps`` columns, mean ± s.e. over seeds with n, the real-data floor as a last row when
  the jobs recorded one), the NFE of each cell when it differs, then the long table (one row per job);
- ``sweep.csv``: the long table (``job``, swept then fixed overrides, metrics, ``nfe``, ``status``, ``error``);
- ``<metric>_vs_<axis>.png`` for each numeric swept axis (``edmlab.evaluation.sweep_plots``: ``_vs_nfe`` when
  ``num_steps``/``nfe`` was swept, ``_vs_rho``, ``_vs_std`` for ``ema.std``, ``_vs_guidance``, …), one line per
  combination of the other swept values (e.g. per solver). The primary metric is the first one present of
  ``PRIMARY_METRICS``.

Failed jobs stay in the table (``status: failed`` with their error; a job directory without ``metrics.json``
counts as failed). When any job failed the report says so on stderr and ends the process with exit code 1,
after writing everything (``exit_on_failure=false`` keeps exit code 0).

Seeds are a sweep axis (``edmlab.evaluation.sweep_mean``): when ``seed`` or ``seeds`` takes several values, the
pivot's cells are means over seeds, and ``sweep_mean.csv`` and ``sweep_mean.md`` (the pivot, then one row per
override combination) hold the mean ± standard error of every metric with its n; the plots show means with error
bars and ``<metric>_mean.png`` every group. An evaluation job of a trained run (``ckpt=<run dir>``) carries the
run's training overrides, so an evaluation sweep over the runs of a ``seed=0,1,2`` training sweep averages over the
training seeds.
"""
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback

from edmlab.evaluation.sweep_jobs import Job, primary_metric, read_jobs
from edmlab.evaluation.sweep_mean import aggregate, check_one_dataset, groups, has_seed_axis, mean_markdown_table
from edmlab.evaluation.sweep_plots import plot_axis_metrics, plot_groups
from edmlab.evaluation.sweep_tables import columns, drop_columns, fixed_overrides, markdown, nfe_pivot, pivot, rows, \
    write_csv


@dataclass
class Report:
    sweep_dir: Path
    jobs: list[Job]
    header: list[str]
    table: list[list]
    metric: str | None
    files: list[Path]
    pivots: str = ""
    mean_header: list[str] = field(default_factory=list)
    mean_table: list[list] = field(default_factory=list)

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if not j.ok]

    def text(self) -> str:
        """What the report prints: the pivots, the long table and the mean table, without the fixed overrides."""
        fixed = fixed_overrides(self.jobs)
        text = self.pivots + "\n" + markdown(*drop_columns(self.header, self.table, fixed), "## Jobs")
        if self.mean_table:
            text += "\n" + markdown(*mean_markdown_table(*drop_columns(self.mean_header, self.mean_table, fixed),
                                                          columns(self.jobs)[1]), "## Mean over seeds")
        return text


def pivot_sections(jobs: list[Job], metric: str | None) -> str:
    """The pivot of ``metric`` and, when the cells' NFE differ, the NFE pivot: markdown sections, or ""."""
    found = pivot(jobs, metric) if metric is not None else None
    if found is None:
        return ""
    text = found.markdown(f"## {metric} by {' × '.join(found.axes) or 'seed'}")
    nfe = nfe_pivot(jobs)
    return text + ("\n" + nfe.markdown("## NFE per cell") if nfe is not None else "")


def write_report(sweep_dir: str | Path, plots: bool = True, jobs: list[Job] | None = None,
                 name: str = "sweep") -> Report:
    """<name>.csv, <name>.md and the plots of ``jobs`` (default: the job dirs under ``sweep_dir``); with a seed
    axis also <name>_mean.csv/.md and ``<metric>_mean.png``. Raises ValueError (after writing <name>.csv and a
    <name>.md without pivot) when the seeds are to be averaged over runs of different data sets."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir) if jobs is None else jobs
    header, table = rows(jobs)
    metric = primary_metric(jobs)
    fixed = fixed_overrides(jobs)
    refusal = None
    if has_seed_axis(jobs):
        try:
            check_one_dataset(jobs)
        except ValueError as e:
            refusal = e
    title = (f"# {name.capitalize()} {sweep_dir.name}\n\n{len(jobs)} jobs, {sum(not j.ok for j in jobs)} failed. "
             f"Primary metric: {metric or 'none'} (lower is better)."
             + (f" Fixed: {', '.join(f'`{k}={v}`' for k, v in fixed.items())}." if fixed else "") + "\n\n")
    pivots = "" if refusal else pivot_sections(jobs, metric)
    files = [write_csv(sweep_dir / f"{name}.csv", header, table), sweep_dir / f"{name}.md"]
    files[-1].write_text(title + pivots + ("\n" if pivots else "")
                         + markdown(*drop_columns(header, table, fixed), "## Jobs"))
    if refusal is not None:
        raise refusal
    report = Report(sweep_dir, jobs, header, table, metric, files, pivots)
    if has_seed_axis(jobs):
        metrics = columns(jobs)[1]
        report.mean_header, report.mean_table = aggregate(jobs, metrics)
        files.append(write_csv(sweep_dir / f"{name}_mean.csv", report.mean_header, report.mean_table))
        mean_title = f"# {name.capitalize()} {sweep_dir.name}: mean ± standard error over seeds\n\n"
        groups_title = (f"## Every override combination\n\nn = jobs that succeeded per row, failed = jobs of the row "
                        f"that failed (in {name}.csv).")
        mean_md = mean_markdown_table(*drop_columns(report.mean_header, report.mean_table, fixed), metrics)
        files.append(sweep_dir / f"{name}_mean.md")
        files[-1].write_text(mean_title + pivots + "\n" + markdown(*mean_md, groups_title))
        if plots and metric is not None and (path := plot_groups(groups(jobs), metric,
                                                                 sweep_dir / f"{metric}_mean.png")) is not None:
            files.append(path)
    if plots and metric is not None:
        files += plot_axis_metrics(jobs, metric, sweep_dir)
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
        print(report.text())
        print(f"sweep report: {sweep_dir / 'sweep.md'} ({len(report.jobs)} jobs, {len(report.failed)} failed)")
        if report.failed:
            for job in report.failed:
                where = " ".join(f"{k}={v}" for k, v in job.overrides.items())
                print(f"error: sweep job {job.num} ({where}) failed: {job.record.get('error')}", file=sys.stderr)
            if self.exit_on_failure:
                sys.stdout.flush()
                raise SystemExit(1)
