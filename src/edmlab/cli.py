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
