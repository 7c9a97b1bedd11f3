"""The jobs of a sweep directory: each job directory's number, overrides and ``metrics.json`` record, an evaluation
job joined with the training overrides of the run it scored, and the order of the table's columns.

A job directory is one holding ``metrics.json`` or ``.hydra/overrides.yaml`` (Hydra's layout); one without
``metrics.json`` did not finish and counts as failed. An evaluation job of a trained run (``ckpt=<run dir>``)
carries the run's training overrides (its ``.hydra/overrides.yaml``; the evaluation's own win where both set a key).

The real-data floor that an evaluation records (``metrics.json``'s ``floor``: ``digits_floor_fd`` beside
``digits_fd``, ``mixture_floor_sliced_wasserstein`` beside ``mixture_sliced_wasserstein``) is read as metrics of
the job under those names.
"""
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

PRIMARY_METRICS = ("fid", "fd_dinov2", "digits_fd", "mixture_ode_error", "mixture_sliced_wasserstein")
NOT_METRICS = {"nfe", "job_num", "status", "error"}
COSTS = ("num_samples", "step", "kimg", "train_sec", "sample_sec", "metric_sec", "images_per_sec", "guide_nfe",
         "network_nfe")  # what a job spent, after its scores
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|inf)(?![A-Za-z0-9_])")


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


def floor_key(metric: str) -> str:
    """The name of ``metric``'s real-data floor in ``metrics.json``: ``digits_fd`` → ``digits_floor_fd``
    (``edmlab.evaluation.metrics.for_dataset``)."""
    family, sep, rest = metric.partition("_")
    return f"{family}_floor_{rest}" if sep else f"{metric}_floor"


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

    @property
    def floors(self) -> dict:
        floor = self.record.get("floor")
        return floor if isinstance(floor, dict) else {}

    def scalar(self, key: str) -> float | None:
        """The number ``key`` of the record, or of its real-data ``floor``; None when absent or not a number."""
        return as_number(self.record[key] if key in self.record else self.floors.get(key))


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


def read_overrides(path: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    return dict(parse_override(o) for o in OmegaConf.load(path))


def read_job(directory: Path) -> Job | None:
    """The job of a sweep subdirectory, or None when it is not a job directory."""
    metrics_file, overrides_file = directory / "metrics.json", directory / ".hydra" / "overrides.yaml"
    if not metrics_file.is_file() and not overrides_file.is_file():
        return None
    if metrics_file.is_file():
        try:
            record = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as e:
            record = {"status": "failed", "error": f"unreadable metrics.json ({e})"}
    else:
        record = {"status": "failed", "error": "no metrics.json: the job did not finish (see its log)"}
    overrides = record.get("overrides")
    own = dict(parse_override(o) for o in overrides) if overrides is not None else \
        read_overrides(overrides_file) if overrides_file.is_file() else {}
    num = record.get("job_num")
    if num is None:
        match = re.match(r"(\d+)(_|$)", directory.name)
        num = int(match.group(1)) if match else None
    run = trained_run(directory, own)
    run_overrides = {}
    if run is not None and run != directory and (run / ".hydra" / "overrides.yaml").is_file():
        run_overrides = read_overrides(run / ".hydra" / "overrides.yaml")
    return Job(directory, num, {**run_overrides, **own}, record, run, run_overrides,
               dataset_name(run) if run is not None else None)


def read_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job directory directly under ``sweep_dir``, in job order."""
    jobs = [job for d in sorted(Path(sweep_dir).iterdir()) if d.is_dir() and (job := read_job(d)) is not None]
    return sorted(jobs, key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.directory.name))


def primary_metric(jobs: list[Job]) -> str | None:
    present = {k for j in jobs for k in j.record}
    return next((m for m in PRIMARY_METRICS if m in present), None)


def numbered(name: str) -> tuple[str, tuple[float, ...]]:
    """(the name with its numbers as ``#``, those numbers): ``loss_per_sigma/0.002-0.01`` →
    (``loss_per_sigma/#-#``, (0.002, 0.01)), so that σ bins sort by value, not as strings."""
    return NUMBER.sub("#", name), tuple(float(n) for n in NUMBER.findall(name))


def in_numeric_order(names: list[str]) -> list[str]:
    """``names`` with those that differ only in their numbers sorted by those numbers, each such family where its
    first member stood; everything else keeps its place."""
    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(numbered(name)[0], []).append(name)
    return [name for members in families.values() for name in sorted(members, key=lambda n: numbered(n)[1])]


def metric_columns(jobs: list[Job], skip=()) -> list[str]:
    """The scalar metrics of the jobs: the primary metric, the other scores (first appearance; numbered families in
    numeric order), the real-data floors, then what the jobs cost (``COSTS``)."""
    found = []
    for job in jobs:
        found += [k for k, v in [*job.record.items(), *job.floors.items()]
                  if k not in NOT_METRICS and k not in skip and k not in found and as_number(v) is not None]
    primary = primary_metric(jobs)
    floors = {k for j in jobs for k in j.floors}
    scores = [k for k in found if k not in floors and k not in COSTS]
    scores = ([primary] if primary in scores else []) + in_numeric_order([k for k in scores if k != primary])
    return scores + in_numeric_order([k for k in found if k in floors and k not in COSTS]) + \
        [k for k in COSTS if k in found]
