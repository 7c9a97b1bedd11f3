"""The tables of a sweep: the long table (one row per job) and the pivot of the swept axes that a paper prints.

Long table (``sweep.csv``): ``job``, the swept overrides, the fixed ones, the metrics (``metric_columns``: primary
first, numbered families such as ``loss_per_sigma/<lo>-<hi>`` in numeric order, the real-data floors, the costs),
``nfe``, ``status``, ``error``.

Pivot (``pivot``): one metric over the swept axes without the seeds. The column axis is a swept ``num_steps``/
``nfe``, else the last numeric axis, else the last axis; every other axis is a row key, so more than two axes give
one row per combination (one axis: its values as rows, the metric as the one column). A cell holds the metric of
its jobs that succeeded: the value of one job, or over n seeds the mean ± standard error (s/√n), n in the caption
when every cell has the same n, else in the cell with the cell's failed jobs; a cell whose jobs all failed reads
``failed``, a combination that was not run ``—``. Numeric axis values are sorted by value, others keep the order of
the sweep. Where the jobs' ``metrics.json`` carries the real-data floor of the metric (``floor_key``), a last row
gives it per column (its range where the column's jobs scored different sample counts).
"""
import csv
import math
from dataclasses import dataclass
from pathlib import Path

from edmlab.evaluation.sweep_jobs import Job, as_number, floor_key, metric_columns
from edmlab.evaluation.sweep_mean import SEED_KEYS, has_seed_axis, mean_se_text, standard_error, swept_axes

NFE_KEYS = ("num_steps", "nfe")
DEFAULT = "(default)"  # the axis value of a job that did not set the key
FLOOR_ROW = "real data (floor)"


def columns(jobs: list[Job]) -> tuple[list[str], list[str]]:
    """(override keys: the swept ones, then the fixed ones; metric keys, as ``metric_columns``)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    swept = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    keys = swept + [k for k in keys if k not in swept]
    return keys, metric_columns(jobs, skip=keys)


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


def markdown(header: list[str], table: list[list], title: str = "", right_from: int | None = None) -> str:
    """A markdown table under ``title``; numeric columns, and every column from ``right_from`` on, right-aligned."""
    right = [any(isinstance(row[i], (int, float)) for row in table)
             and all(isinstance(row[i], (int, float)) or row[i] is None for row in table)
             or (right_from is not None and i >= right_from) for i in range(len(header))]
    lines = [f"{title}\n" if title else ""]
    lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table]
    return "\n".join(lines).lstrip("\n") + "\n"


def axis_values(jobs: list[Job], key: str) -> list[str | None]:
    """The values ``key`` takes: by value when all are numbers, else in the order of the sweep; unset last."""
    values = list(dict.fromkeys(j.overrides.get(key) for j in jobs))
    given = [v for v in values if v is not None]
    if all(as_number(v) is not None for v in given):
        given.sort(key=as_number)
    return given + [None] * (None in values)


def column_axis(axes: list[str], jobs: list[Job]) -> str | None:
    """The axis across the columns: a swept num_steps/nfe, else the last numeric axis, else the last axis; None
    for fewer than two axes."""
    if len(axes) < 2:
        return None
    numeric = [k for k in axes if all(as_number(v) is not None for v in axis_values(jobs, k) if v is not None)]
    return next((k for k in axes if k.rsplit(".", 1)[-1] in NFE_KEYS), numeric[-1] if numeric else axes[-1])


@dataclass
class Cell:
    values: list[float]
    failed: int

    @property
    def n(self) -> int:
        return len(self.values)


def cell_of(jobs: list[Job], metric: str) -> Cell:
    values = [y for j in jobs if j.ok and (y := j.scalar(metric)) is not None and math.isfinite(y)]
    return Cell(values, sum(not j.ok for j in jobs))


def cell_text(cell: Cell | None, show_n: bool) -> str:
    if cell is None:
        return "—"
    if not cell.values:
        return "failed" if cell.failed else ""
    mean = sum(cell.values) / cell.n
    text = mean_se_text(mean, standard_error(cell.values) if cell.n > 1 else None)
    notes = ([f"n={cell.n}"] if show_n else []) + ([f"{cell.failed} failed"] if cell.failed else [])
    return text + (f" ({', '.join(notes)})" if notes else "")


def spread_text(values: list[float]) -> str:
    """One value as ``.4g``; several distinct ones as their range ``lo–hi``."""
    distinct = sorted(set(values))
    if not distinct:
        return ""
    return f"{distinct[0]:.4g}" if len(distinct) == 1 else f"{distinct[0]:.4g}–{distinct[-1]:.4g}"


@dataclass
class Layout:
    """Where each job sits in a pivot: ``row_keys`` × ``column`` (None: one column), the row combinations and
    column values in table order, and the jobs of each (row combination, column value)."""

    row_keys: list[str]
    column: str | None
    combos: list[tuple]
    column_values: list
    cells: dict[tuple, list[Job]]

    @property
    def axes(self) -> list[str]:
        return self.row_keys + ([self.column] if self.column else [])

    @property
    def row_header(self) -> list[str]:
        names = self.row_keys or [""]
        return names[:-1] + [f"{names[-1]} \\ {self.column}"] if self.column else names

    def header(self, single: str) -> list[str]:
        values = [DEFAULT if v is None else v for v in self.column_values] if self.column else [single]
        return [*self.row_header, *values]

    def table(self, text) -> list[list[str]]:
        """One row per combination that has jobs: its axis values, then ``text(jobs of the cell or None)`` per
        column."""
        return [[*((DEFAULT if v is None else v for v in combo) if self.row_keys else ["all jobs"]),
                 *(text(self.cells.get((combo, c))) for c in self.column_values)]
                for combo in self.combos if any((combo, c) in self.cells for c in self.column_values)]


def layout(jobs: list[Job]) -> Layout:
    axes = swept_axes(jobs)
    column = column_axis(axes, jobs)
    row_keys = [k for k in axes if k != column]
    combos = [()]
    for key in row_keys:
        combos = [(*c, v) for c in combos for v in axis_values(jobs, key)]
    by_cell: dict[tuple, list[Job]] = {}
    for job in jobs:
        spot = (tuple(job.overrides.get(k) for k in row_keys), job.overrides.get(column) if column else None)
        by_cell.setdefault(spot, []).append(job)
    return Layout(row_keys, column, combos, axis_values(jobs, column) if column else [None], by_cell)


@dataclass
class Pivot:
    """A pivot table: ``header`` (row keys, then the column values), ``table`` of text cells, and its caption."""

    header: list[str]
    table: list[list[str]]
    caption: str
    lead: int  # the row-key columns
    axes: list[str]  # the row keys, then the column axis

    def markdown(self, title: str) -> str:
        return markdown(self.header, self.table, f"{title}\n\n{self.caption}", right_from=self.lead)


def pivot_caption(metric: str, counts: set[int], seeds: list[str], floor: str | None) -> str:
    """What the pivot's cells are: one job (no ``counts``), or the mean ± s.e. over ``seeds`` with n = the one
    count, else n in each cell; and what the floor row is."""
    if not counts:
        cells = "Each cell: one job."
    else:
        over = f" ({', '.join(f'`{k}`' for k in seeds)})" if seeds else ""
        n = f"n = {next(iter(counts))} per cell" if len(counts) == 1 else "n in each cell"
        cells = f"Each cell: mean ± standard error over seeds{over}, {n}."
    floor_row = f" Last row: real data scored as the samples, at the same count ({floor} in metrics.json's floor)." \
        if floor else ""
    return f"{metric}, lower is better. {cells}{floor_row}"


def pivot(jobs: list[Job], metric: str) -> Pivot | None:
    """The pivot of ``metric`` over the swept axes (module docstring); None when no job has the metric or there is
    neither a swept axis nor a seed axis."""
    if not any(j.scalar(metric) is not None for j in jobs) or not (swept_axes(jobs) or has_seed_axis(jobs)):
        return None
    grid = layout(jobs)
    cells = {spot: cell_of(group, metric) for spot, group in grid.cells.items()}
    counts = {c.n for c in cells.values() if c.values}
    repeated = any(c.n > 1 for c in cells.values())
    show_n = repeated and len(counts) > 1
    table = grid.table(lambda group: cell_text(None if group is None else cell_of(group, metric), show_n))
    floor = floor_key(metric)
    floors = [[y for j in jobs if (grid.column is None or j.overrides.get(grid.column) == c) and j.ok
               and (y := as_number(j.floors.get(floor))) is not None] for c in grid.column_values]
    if any(floors):
        table.append([FLOOR_ROW, *[""] * (len(grid.row_header) - 1), *(spread_text(f) for f in floors)])
    seeds = [k for k in SEED_KEYS if any(k in j.overrides for j in jobs)]
    caption = pivot_caption(metric, counts if repeated else set(), seeds, floor if any(floors) else None)
    return Pivot(grid.header(metric), table, caption, len(grid.row_header), grid.axes)


def nfe_pivot(jobs: list[Job]) -> Pivot | None:
    """The NFE of each cell of ``pivot`` (its value, or range), when the NFE differs within a column (e.g. solver ×
    num_steps: Heun spends 2N − 1 calls, Euler N); None when the column alone sets it."""
    if not swept_axes(jobs):
        return None
    grid = layout(jobs)
    per_column = {c: {j.scalar("nfe") for (_, column), group in grid.cells.items() if column == c for j in group
                      if j.ok} - {None} for c in grid.column_values}
    if all(len(values) < 2 for values in per_column.values()):
        return None
    table = grid.table(lambda group: "—" if group is None else
                       spread_text([y for j in group if j.ok and (y := j.scalar("nfe")) is not None]))
    return Pivot(grid.header("nfe"), table, "Denoiser evaluations per sample (metrics.json's nfe) of each cell "
                                            "above.", len(grid.row_header), grid.axes)
