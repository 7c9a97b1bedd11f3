"""Atomic file writes: a reader (or a crash, a kill, a full disk) sees either the old complete file or the new
complete file, never a partial one.

Every write goes to a temporary file *in the target's own directory* (so the final ``os.replace`` is a rename
within one file system, whatever ``$TMPDIR`` is: no EXDEV fallback that rewrites in place), is flushed and fsynced,
then renamed over the target, and the directory is fsynced so that the rename itself survives a power cut.
Temporary files are named ``.<name>.edmlab-tmp-<random>``; ``remove_orphans`` deletes those a killed writer left.
"""
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

TMP_TAG = ".edmlab-tmp-"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(f)`` on a binary file that becomes ``path`` only once it is complete and on disk; it gets the
    permissions a plain ``open(path, "w")`` would give (those of the file it replaces, else 0o666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_TAG}")
    try:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, **kwargs) -> Path:
    return atomic_write_text(path, json.dumps(obj, **{"indent": 2, **kwargs}) + "\n")


def atomic_torch_save(obj, path: str | Path) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def remove_orphans(*directories: str | Path) -> list[Path]:
    """Delete the temporary files that a killed atomic write left in ``directories`` (not recursive)."""
    removed = []
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            continue
        for f in directory.glob(f".*{TMP_TAG}*"):
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    return removed
