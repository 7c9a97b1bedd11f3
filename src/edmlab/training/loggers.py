"""The CSV log of a run, kept across resumes; TensorBoard when its package is installed.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts ("Previous log files … will be
deleted"), so a run resumed in place (by hand, or by a SLURM requeue) would keep only the curves of its last
part. ``ResumableCSVLogger`` appends instead: it keeps the rows up to the step the run resumes from (rows logged
after that checkpoint, by a run killed without one, are dropped: the resumed run logs those steps again), and
the header grows when new columns appear, as Lightning's writer does.
"""
import csv
import importlib.util
import io

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from edmlab.infra.files import atomic_write_text


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])

    def keep_until(self, step: int) -> None:
        """Drop the rows logged after ``step``."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or float(r["step"]) <= step]
        if len(kept) == len(rows):
            return
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.metrics_file_path, text.getvalue())


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to the run's ``metrics.csv`` (module docstring)."""

    @property
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def resume_at(self, step: int) -> None:
        self.experiment.keep_until(step)


class MissingPackage(ValueError):
    """An option needs a package that is not installed; the message names the package and how to install it."""


TENSORBOARD_WRITERS = ("tensorboard", "tensorboardX")  # Lightning's TensorBoardLogger writes with either


def tensorboard_logger(save_dir: str, name: str = "tensorboard", version: str = "", **kwargs):
    """Lightning's ``TensorBoardLogger`` writing to ``<save_dir>/<name>`` (``tensorboard --logdir`` there), or, when
    neither package of ``TENSORBOARD_WRITERS`` is importable, a MissingPackage error in one line."""
    if not any(importlib.util.find_spec(package) for package in TENSORBOARD_WRITERS):
        raise MissingPackage("logger=tensorboard needs the tensorboard package, which is not installed: pip install "
                             "tensorboard (or the lighter tensorboardX); or log with logger=csv or logger=wandb")
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir, name=name, version=version, **kwargs)
