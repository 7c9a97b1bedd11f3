"""Shared behaviour of the command-line entry points."""
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The EMA copy is in eval mode on purpose; Lightning's pytree notice is internal to Lightning.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def short_dirname(overrides: str, limit: int = 120) -> str:
    """A sweep job's directory name from its overrides, cut to ``limit`` characters with a hash of the whole, so
    that long override lists stay under the file-name limit and distinct."""
    if len(overrides) <= limit:
        return overrides
    import hashlib

    return f"{overrides[:limit - 9]}_{hashlib.sha1(overrides.encode()).hexdigest()[:8]}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("edmlab_dirname", short_dirname, replace=True)


register_resolvers()

APPENDED_GROUPS = ("launcher",)  # option groups of conf/ that are no entry of the defaults lists


def plain_group_overrides(args: list[str]) -> list[str]:
    """Command-line overrides with ``launcher=joblib`` read as ``+launcher=joblib``.

    conf/launcher is deliberately no entry of train.yaml's and eval.yaml's defaults lists: Hydra refuses
    ``+group=option`` for a group that has an entry ("Multiple values for launcher"), and ``+launcher=...`` is the
    form docs, src/study.py and the tests use. Hydra in turn refuses ``group=option`` for a group without an entry
    ("Could not override 'launcher'"), so the entry points add the ``+`` (lightning-hydra-template's spelling
    ``launcher=joblib`` then works too); Hydra's compose API still needs ``+launcher=...``."""
    return [f"+{arg}" if arg.partition("=")[0] in APPENDED_GROUPS and "=" in arg else arg for arg in args]


def job_info() -> dict:
    """The Hydra overrides and job number of the running job (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    info = {"overrides": list(hydra_cfg.overrides.task)}
    num = OmegaConf.select(hydra_cfg, "job.num", default=None)
    if num is not None:
        info["job_num"] = int(num)
    return info


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def parallel_jobs(environ=os.environ) -> int:
    """Processes of this job type sharing the machine: the joblib launcher's ``n_jobs`` in a multirun (1 for
    Hydra's basic launcher), times torchrun's / SLURM's processes per node (``LOCAL_WORLD_SIZE``)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    jobs = 1
    if in_multirun():
        n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
        jobs = int(n_jobs) if isinstance(n_jobs, int) and n_jobs > 0 else 1
    return jobs * max(1, int(environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def share_the_machine(threads) -> int:
    """torch's threads for this job (``threads=`` of train.yaml/eval.yaml): the given count, else its share of the
    cores it really has (``edmlab.infra.threads``; ``OMP_NUM_THREADS`` first), and one INFO line when shared."""
    from edmlab.infra.threads import share_threads

    jobs = parallel_jobs() if threads is None else 1
    count = share_threads(threads, parallel_jobs=jobs)
    if jobs > 1:
        logging.getLogger("edmlab").info("%d parallel jobs on this machine: %d torch thread(s) each", jobs, count)
    return count


def is_process_zero() -> bool:
    """Rank 0 of torchrun/SLURM and not one of Lightning's DDP children (RANK and LOCAL_RANK 0 or unset): the one
    process that writes a job's failure record or removes its run dir."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK"))


def refusal(error: BaseException) -> BaseException | None:
    """The error that a refused command reports, or None when ``error`` is not a refusal: a bad value
    (ValueError), a missing file, or either of them inside Hydra's instantiation wrapper."""
    from hydra.errors import InstantiationException

    if not isinstance(error, (ValueError, FileNotFoundError, InstantiationException)):
        return None
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


def failure_message(error: BaseException) -> str:
    """One line for a job's error: a refusal's own message (it names the key, the value and the fix), any other
    error with its type (``RuntimeError: ...``), which says more than the message alone."""
    cause = refusal(error)
    text = str(cause) if cause is not None else f"{type(error).__name__}: {error}"
    return re.sub(r"\s*\n\s*", " ", text.strip())


def print_job_failure(record: dict) -> None:
    """The one stderr line of a failed sweep job: its number, its overrides, its error."""
    where = " ".join(record.get("overrides", []))
    print(f"error: job {record.get('job_num', '')} ({where}) failed: {record['error']}", file=sys.stderr)


HYDRA_RECORDS = {"config.yaml", "hydra.yaml", "overrides.yaml"}  # what Hydra writes into <run dir>/.hydra


def _written_by_hydra_or_the_refusal(entry: Path) -> bool:
    if entry.is_symlink():
        return False
    if entry.name == ".hydra" and entry.is_dir():
        return all(f.is_file() and not f.is_symlink() and f.name in HYDRA_RECORDS for f in entry.iterdir())
    if entry.suffix == ".log" and entry.is_file():
        return True
    if entry.name == "metrics.json" and entry.is_file():  # the failure record of an evaluation job
        try:
            return json.loads(entry.read_text()).get("status") == "failed"
        except (OSError, ValueError, AttributeError):
            return False
    return False


def remove_refused_run_dir(directory: str | Path) -> bool:
    """Remove the run dir of a refused single run when it holds nothing but what Hydra wrote before the job
    started (``.hydra/`` with its three records, ``<task>.log``) and the refused job's own failure record (a
    ``metrics.json`` of status failed), then its parents below the working directory that this leaves empty
    (``outputs/eval/``): a mistyped command leaves no dir behind. A dir holding anything else (a resumed run's
    checkpoints, samples, a config.yaml, a file of the user's) is kept whole, as are the working directory and
    its parents. True when removed."""
    directory, here = Path(directory).absolute(), Path.cwd().resolve()
    if not directory.is_dir() or directory.is_symlink() or directory.resolve() in (here, *here.parents):
        return False
    if not all(_written_by_hydra_or_the_refusal(entry) for entry in directory.iterdir()):
        return False
    shutil.rmtree(directory)
    for parent in directory.resolve().parents:
        if parent == here or here not in parent.parents:
            break
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
    return True


def record_failure(directory: str | Path, error: BaseException) -> dict:
    """Write the failure record of a sweep job into ``<directory>/metrics.json`` (status failed, its one-line
    error, its overrides and job number: what ``edmlab.evaluation.sweep`` tabulates) and print its one stderr line."""
    from edmlab.infra.files import atomic_write_json

    record = {"status": "failed", "error": failure_message(error), **job_info()}
    atomic_write_json(Path(directory) / "metrics.json", record)
    print_job_failure(record)
    return record


@contextlib.contextmanager
def friendly_errors():
    """The errors of a Hydra job (``src/train.py``, ``src/eval.py``), by run mode.

    Single run: a refusal (``refusal``: a bad value, a missing file, a wrong checkpoint) ends the command with one
    line ``error: ...`` on stderr and exit code 2, not a traceback, and removes the run dir Hydra made for it when
    that holds nothing else (``remove_refused_run_dir``); any other error propagates with its traceback.

    Multirun: any error of a job is recorded in the job dir (``record_failure``, which stays) and the job returns
    normally, so that the other jobs run and the sweep report lists the failure and ends the process with exit
    code 1. Neither alternative works under Hydra 1.3: ``sys.exit`` in a job (SystemExit is no Exception) ends the
    whole sweep at once, and a raised Exception is kept by the launcher (basic or joblib) only until the sweeper
    re-raises the first one, before ``on_multirun_end`` writes the report.

    EDMLAB_DEBUG=1 lets every error through with its traceback.
    """
    try:
        yield
    except Exception as e:
        if os.environ.get("EDMLAB_DEBUG"):
            raise
        from hydra.core.hydra_config import HydraConfig

        if in_multirun():
            logging.getLogger(__name__).exception("the job failed")  # the traceback, in the job's log
            if is_process_zero():
                record_failure(HydraConfig.get().runtime.output_dir, e)
            return
        if refusal(e) is None:
            raise
        print(f"error: {failure_message(e)}", file=sys.stderr)
        if HydraConfig.initialized() and is_process_zero():
            remove_refused_run_dir(HydraConfig.get().runtime.output_dir)
        sys.exit(2)
