"""How training checkpoints reach and leave the disk: atomically written, read without running anything.

Lightning's own writer rewrites ``last.ckpt`` in place where fsspec's rename crosses file systems (``$TMPDIR``
elsewhere, as on many clusters), so a kill in that window leaves a truncated file, the only one; and its reader
takes whatever ``torch.load`` allows. Here a checkpoint goes through :func:`edmlab.infra.files.atomic_torch_save` (a
temporary file in the checkpoint's own directory, fsynced, renamed), and is read with ``weights_only=True``: a
file that would need pickled code to load is refused with one line naming it.
"""
from pathlib import Path

from lightning.pytorch.plugins.io import TorchCheckpointIO

from edmlab.io.network_file import read_plain
from edmlab.infra.files import atomic_torch_save

CHECKPOINT = "a checkpoints/last.ckpt written by src/train.py"


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A training checkpoint of src/train.py, read with ``weights_only=True`` (``edmlab.io.network_file.read_plain``)."""
    blob = read_plain(path, CHECKPOINT, map_location)
    if not isinstance(blob, dict) or "state_dict" not in blob or "global_step" not in blob:
        found = sorted(map(str, blob))[:6] if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path} is not a training checkpoint (found {found}); pass {CHECKPOINT}")
    return blob


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic writes and ``weights_only`` reads (module docstring)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None:
            raise TypeError("storage_options is not supported by edmlab's SafeCheckpointIO")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return read_plain(path, CHECKPOINT, map_location)  # also ddp_spawn's weights hand-over file
