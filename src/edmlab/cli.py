"""Shared behaviour of the command-line entry points."""
import contextlib
import os
import sys
import warnings

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The EMA copy is in eval mode on purpose; Lightning's pytree notice is internal to Lightning.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


@contextlib.contextmanager
def friendly_errors():
    """A bad value, a missing file or a wrong checkpoint ends the command with one clear line, not a traceback
    (set EDMLAB_DEBUG=1 for the traceback)."""
    from hydra.errors import InstantiationException

    try:
        yield
    except (ValueError, FileNotFoundError, InstantiationException) as e:
        if os.environ.get("EDMLAB_DEBUG"):
            raise
        cause = e
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
