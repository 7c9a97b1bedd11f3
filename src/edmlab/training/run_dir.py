"""One run per run directory, and what ``ckpt_path=`` may name.

A run directory belongs to one training run. While a process trains in it, it holds an exclusive lock on
``<run dir>/.lock`` (``fcntl.flock``: released by the kernel when the process dies, so a killed run never leaves a
stale lock). A directory that already holds a run (its ``config.yaml`` or ``checkpoints/``) is refused unless this
command resumes that very run (``ckpt_path`` inside it, or a SLURM requeue checkpoint ``hpc_ckpt_*.ckpt`` there).
``run.json`` keeps the run's W&B id, so a resumed run logs into the same W&B run.

When a run ends, ``summary`` says in a few lines where it is and what it scored (``src/eval.py`` ends alike).
"""
import fcntl
import json
import os
from pathlib import Path

from edmlab.infra.files import atomic_write_json, remove_orphans

RUN_FILE = "run.json"
_held = {}  # run dir -> open lock file, for the life of the process


class RunDirError(ValueError):
    """The run directory cannot be used; the message names it and the fix."""


def checkpoint_file(ckpt_path) -> Path:
    """The checkpoint that ``ckpt_path=`` names: a ``.ckpt`` file, or a run directory's ``checkpoints/last.ckpt``.
    A network file is refused with the option that takes it (``init_from=``)."""
    path = Path(str(ckpt_path))
    if path.is_dir():
        last = path / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path={path} is a directory without checkpoints/last.ckpt: pass a run dir "
                                    f"of src/train.py or its checkpoint file")
        return last
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such file; pass a run dir or its checkpoints/last.ckpt")
    if path.suffix in (".pt", ".pkl") or path.name.startswith("network"):
        raise RunDirError(f"ckpt_path={path} is a network file, not a training checkpoint: to start a new run from "
                          f"its weights use init_from={path}; to resume a run pass its dir or checkpoints/last.ckpt")
    return path


def holds_run(directory: Path) -> bool:
    return (directory / "config.yaml").is_file() or (directory / "checkpoints").is_dir()


def slurm_checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob("hpc_ckpt_*.ckpt"))


def check_run_dir_free(directory: Path, ckpt: Path | None) -> None:
    """Refuse a directory that holds another run (read-only: nothing is written before the whole run is checked)."""
    directory = Path(directory)
    if not holds_run(directory):
        return
    resuming_here = ckpt is not None and directory.resolve() in Path(ckpt).resolve().parents
    if resuming_here or slurm_checkpoints(directory):
        return
    held = [n for n in ("config.yaml", "checkpoints", "network.pt", "metrics.json") if (directory / n).exists()]
    raise RunDirError(f"{directory} already holds a run ({', '.join(held)}): resume it with ckpt_path={directory}, "
                      f"or give this run its own dir (hydra.run.dir=<new dir>, or leave it to the default)")


def stored_run_id(directory: Path) -> str | None:
    """The W&B run id that ``run.json`` keeps for the run in ``directory``, if any."""
    path = Path(directory) / RUN_FILE
    try:
        return json.loads(path.read_text()).get("wandb_id")
    except (OSError, ValueError, AttributeError):
        return None


def claim(directory: Path, run_id: str | None = None) -> None:
    """Lock ``directory`` for this process, delete temporary files that killed writers left, and keep ``run_id``
    in ``run.json``. A live process holding the lock is refused."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    if key not in _held:
        f = open(directory / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            f.close()
            raise RunDirError(f"{directory} is in use by a live training process ({owner}): wait for it, or give "
                              f"this run its own dir (hydra.run.dir=<new dir>)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        _held[key] = f
    remove_orphans(directory, directory / "checkpoints", directory / "phema")
    if run_id is not None and stored_run_id(directory) != run_id:
        atomic_write_json(directory / RUN_FILE, {"wandb_id": run_id})


def release(directory: Path) -> None:
    f = _held.pop(str(Path(directory).resolve()), None)
    if f is not None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


RUN_OUTPUTS = ("network.pt", "samples.png", "metrics.json", "loss_per_sigma.png", "checkpoints/last.ckpt")
HEADLINE = 3  # scores shown: digits FD, precision, recall; mixture sliced Wasserstein, MMD
BOOKKEEPING = {"step", "kimg", "train_sec", "sample_sec", "num_samples", "nfe", "train_loss", "images_per_sec"}


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it, else absolute."""
    path = Path(path).absolute()
    here = Path.cwd().absolute()
    return str(path.relative_to(here)) if here in path.parents else str(path)


def scores(metrics: dict) -> list[str]:
    """``name=value (floor f)`` for each number of the data-set metric in a final report's ``metrics.json``,
    with its real-data floor at the same count where the report has one."""
    floor = metrics.get("floor") or {}
    found = []
    for key, value in metrics.items():
        if key in BOOKKEEPING or not isinstance(value, float) or key.endswith(("num_images", "num_samples")):
            continue
        prefix, _, name = key.partition("_")
        bound = floor.get(f"{prefix}_floor_{name}")
        found.append(f"{key}={value:.4g}" + (f" (floor {bound:.4g})" if isinstance(bound, float) else ""))
    return found


def summary(directory: Path, metrics: dict | None = None, note: str | None = None, stopped: str | None = None,
            resume: str | None = None) -> list[str]:
    """The lines a run ends with: its dir with step, kimg, loss and speed (after ``stopped``, what stopped it);
    the final report's scores (and ``note``: why it drew fewer samples than configured); the files it wrote,
    relative to the dir; and ``resume``, the command that continues it."""
    metrics = metrics or {}
    facts = [stopped] if stopped else []
    if "step" in metrics:
        facts += [f"step {metrics['step']}", f"{metrics['kimg']:g} kimg"]
    if isinstance(metrics.get("train_loss"), float):
        facts.append(f"train_loss {metrics['train_loss']:.4g}")
    if isinstance(metrics.get("images_per_sec"), float):
        facts.append(f"{metrics['images_per_sec']:.0f} img/s")
    lines = [f"run dir: {shown(directory)}" + (f" ({', '.join(facts)})" if facts else "")]
    found = scores(metrics)
    if found:
        more = f", … ({len(found) - HEADLINE} more in metrics.json)" if len(found) > HEADLINE else ""
        count = f"{metrics['num_samples']} samples" + (f", {note}" if note else "")
        lines.append(f"  {', '.join(found[:HEADLINE])}{more} [{count}]")
    written = [name for name in RUN_OUTPUTS if (Path(directory) / name).is_file()]
    lines.append("  " + ("  ".join(written) if written else "no network.pt, metrics.json or checkpoint written"))
    if resume:
        lines.append(f"  resume in place: {resume}")
    return lines
