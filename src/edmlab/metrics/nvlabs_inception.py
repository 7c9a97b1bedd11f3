"""NVlabs' own Inception-v3 detector for FID (``metrics.fid.detector=nvlabs``), read from a local file.

NVlabs/edm's ``fid.py`` and edm2's ``calculate_metrics.py`` score with ``inception-2015-12-05.pkl``: a TorchScript
translation of TensorFlow's 2015 Inception graph (the one of the original FID), taking uint8 images [N, 3, H, W]
and returning 2048 pool features with ``return_features=True``. StyleGAN2-ADA published the same module as the
TorchScript archive ``inception-2015-12-05.pt``. Both load here: the ``.pt`` with ``torch.jit.load``, the ``.pkl``
through edmlab's restricted unpickler (no pickled Python is run), taking the TorchScript archive it carries.
torch-fidelity's default detector is a port of the same graph; this option exists to compare with the papers'
FIDs to the digit.
"""
import functools
import io
from pathlib import Path

import torch

URL_PKL = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl"
URL_PT = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
FEATURE_DIM = 2048
ZIP_MAGIC = b"PK\x03\x04"  # a TorchScript archive is a ZIP file


def _torchscript_archives(obj, depth: int = 0):
    """The byte strings inside ``obj`` (a restricted-unpickled object) that are ZIP archives, i.e. TorchScript."""
    from ..nvlabs import Persistent

    if depth > 8:
        return
    if isinstance(obj, (bytes, bytearray)) and obj[:4] == ZIP_MAGIC:
        yield bytes(obj)
    elif isinstance(obj, Persistent) or hasattr(obj, "state"):
        yield from _torchscript_archives(obj.state, depth + 1)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _torchscript_archives(value, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _torchscript_archives(value, depth + 1)


@functools.lru_cache(maxsize=2)
def load_detector(path: str) -> torch.jit.ScriptModule:
    """The detector of ``inception-2015-12-05.pkl`` or ``.pt`` at ``path`` (CPU, eval mode), checked to give
    [N, 2048] features."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"metrics.fid.detector=nvlabs needs NVlabs' Inception detector, not found at {file}: "
                                f"download {URL_PKL} (or the TorchScript {URL_PT}) and pass "
                                f"metrics.fid.detector_path=/path/to/inception-2015-12-05.pkl")
    with open(file, "rb") as f:
        is_archive = f.read(4) == ZIP_MAGIC
    if is_archive:
        archive = file.read_bytes()
    else:
        from ..nvlabs import read_pickle

        found = next(_torchscript_archives(read_pickle(file)), None)
        if found is None:
            raise ValueError(f"{file}: no TorchScript module inside; expected NVlabs' inception-2015-12-05.pkl "
                             f"({URL_PKL}) or .pt")
        archive = found
    try:
        detector = torch.jit.load(io.BytesIO(archive), map_location="cpu").eval()
        with torch.no_grad():
            probe = detector(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), return_features=True)
    except Exception as e:  # noqa: BLE001 (any failure of the archive is the file's)
        raise ValueError(f"{file}: not a working Inception detector ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); expected NVlabs' inception-2015-12-05") from None
    if tuple(probe.shape) != (1, FEATURE_DIM):
        raise ValueError(f"{file}: the detector gives features of shape {tuple(probe.shape)} for one image, expected "
                         f"(1, {FEATURE_DIM}) (NVlabs' inception-2015-12-05)")
    return detector


def nvlabs_features(images_uint8: torch.Tensor, path: str, batch_size: int = 64,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Pool features [N, 2048] (float64) of uint8 RGB images [N, 3, H, W], as NVlabs' fid.py computes them."""
    detector = load_detector(str(path)).to(device)
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 or images_uint8.shape[1] not in (1, 3):
        raise ValueError(f"NVlabs' detector takes uint8 images [N, 3, H, W] (or grey [N, 1, H, W]), got "
                         f"{images_uint8.dtype} {tuple(images_uint8.shape)}")
    images_uint8 = images_uint8.expand(-1, 3, -1, -1)  # grey → RGB, as NVlabs' fid.py does
    with torch.no_grad():
        return torch.cat([detector(chunk.to(device), return_features=True).to(torch.float64).cpu()
                          for chunk in images_uint8.split(batch_size)])
