"""NVlabs' own Inception-v3 detector for FID (``metrics.fid.detector=nvlabs``), read from a local file.

NVlabs/edm's ``fid.py`` and edm2's ``calculate_metrics.py`` score with ``inception-2015-12-05.pkl`` (``pickle.load``
of it gives a module called as ``detector(images_uint8, return_features=True)`` → [N, 2048]); StyleGAN2-ADA
published the same network as the TorchScript archive ``inception-2015-12-05.pt`` (``torch.jit.load`` in its
``metrics/metric_utils.py``). Both are translations of TensorFlow's 2015 Inception graph, the one of the original
FID; torch-fidelity's default detector is a port of the same graph, and this option exists to compare with the
papers' FIDs to the digit.

What the ``.pkl`` holds has not been verified on the file (none was available offline). NVlabs/stylegan3's
``metrics/frechet_inception_distance.py`` calls it a "Direct TorchScript translation"; a TorchScript module cannot be
pickled by itself (``pickle.dumps`` of one raises: the C++ module has no ``__getstate__``), so ``pickle.load`` can
only rebuild it from the archive's bytes in Python — in NVlabs' code, a ``torch_utils.persistence`` object
(``_reconstruct_persistent_obj(meta)``, stylegan3's ``torch_utils/persistence.py``) whose state carries the archive.
The forms read (:func:`inspect_detector_file`):

* a TorchScript archive (a ZIP file with ``code/``): NVlabs' ``.pt``;
* a pickle, read by edmlab's restricted unpickler (no pickled Python is run, ``module_src`` is never executed),
  holding exactly one TorchScript archive somewhere in its objects (persistent objects' state, dicts, lists,
  tuples) as ``bytes``/``bytearray``, a 1-D uint8 tensor or a 1-D uint8 NumPy array.

Anything else is a one-line :class:`DetectorFileError` (or :class:`~edmlab.io.nvlabs.UnsafePickleError` for a pickle
naming a global outside the format) that names the file, what it holds and what was expected.
"""
import functools
import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

URL_PKL = ("https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/"
           "inception-2015-12-05.pkl")
URL_PT = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
FEATURE_DIM = 2048
ZIP_MAGIC = b"PK\x03\x04"  # TorchScript archives and torch.save files (since torch 1.6) are ZIP files
PROBE_SHAPE = (1, 3, 32, 32)
EXPECTED = (f"NVlabs' inception-2015-12-05.pkl ({URL_PKL}) or the TorchScript inception-2015-12-05.pt ({URL_PT}), "
            "passed as metrics.fid.detector_path")


class DetectorFileError(ValueError):
    """A file that is not NVlabs' Inception detector in a form edmlab reads."""


@dataclass
class DetectorFile:
    """What a detector file holds: ``form`` ('torchscript' or 'pickle'), where the TorchScript ``archive`` was found,
    the persistent classes of the pickle and their ``module_src`` (text only: never run)."""

    path: str
    form: str
    archive: bytes
    where: str
    classes: list[str] = field(default_factory=list)
    module_src: dict[str, str] = field(default_factory=dict)

    @property
    def archive_sha256(self) -> str:
        return hashlib.sha256(self.archive).hexdigest()


def _zip_names(data: bytes | Path) -> list[str] | None:
    """The member names of a ZIP file or ZIP bytes; None when it is no readable ZIP."""
    try:
        with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _is_torchscript(names: list[str] | None) -> bool:
    """A TorchScript archive has ``<root>/code/`` (the module's TorchScript source); a ``torch.save`` ZIP has not."""
    return bool(names) and any("/code/" in f"/{n}" for n in names)


def _as_bytes(value) -> bytes | None:
    """``value`` as bytes when it is a byte string or a 1-D uint8 tensor/array, else None."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if torch.is_tensor(value) and value.dtype == torch.uint8 and value.ndim == 1:
        value = value.detach().contiguous().numpy()
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return value.tobytes() if value[:4].tobytes() == ZIP_MAGIC else b""  # copy archives only
    return None


def _walk(obj, where: str, found: list, classes: list, depth: int = 0) -> None:
    """Collect (where, archive) of every TorchScript archive in a restricted-unpickled object graph, and the
    persistent classes met on the way."""
    from edmlab.io.nvlabs.unpickler import Persistent, TorchModule

    if depth > 16:
        return
    data = _as_bytes(obj)
    if data is not None:
        if data[:4] == ZIP_MAGIC and _is_torchscript(_zip_names(data)):
            found.append((where, data))
        return
    if isinstance(obj, Persistent):
        classes.append(obj.class_name)
        _walk(obj.state, f"{where}<{obj.class_name}>", found, classes, depth + 1)
    elif isinstance(obj, TorchModule):
        _walk(obj.state, f"{where}<{obj.class_name}>", found, classes, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _walk(value, f"{where}[{key!r}]", found, classes, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _walk(value, f"{where}[{i}]", found, classes, depth + 1)


def _describe(obj, classes: list[str]) -> str:
    """A few words on what an unpickled object is, for error messages."""
    if classes:
        names = list(dict.fromkeys(classes))
        what = f"persistent objects of {', '.join(names[:4])}{', …' if len(names) > 4 else ''}"
    else:
        what = f"a {type(obj).__name__}"
    if isinstance(obj, dict):
        keys = [str(k) for k in obj][:5]
        what += f" in a dict with keys {keys}"
        if {"ema", "net", "G_ema", "D"} & set(map(str, obj)):
            what += " (a network snapshot)"
    return what


def _torch_save_hint(path: Path) -> str:
    """What a torch.save file holds (tensor count, a known layout), read without running pickled code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - only a hint for the message
        return f"a torch.save file that torch.load(weights_only=True) refuses ({type(e).__name__})"
    if not isinstance(state, dict):
        return f"a torch.save file holding a {type(state).__name__}"
    keys = [str(k) for k in state]
    hint = f"a torch.save state dict of {len(keys)} entries ({', '.join(keys[:2])}{', …' if len(keys) > 2 else ''})"
    if "Mixed_7c.branch_pool.conv.weight" in state:
        hint += " — torch-fidelity's Inception-v3 weights: pass them as metrics.fid.weights_path with " \
                "metrics.fid.detector=torch-fidelity"
    elif "cls_token" in state or any(k.startswith("blocks.0.attn") for k in keys):
        hint += " — a vision transformer's weights (DINOv2?), not an Inception network"
    return hint


def _read_pickle(file: Path):
    """The object of a pickle read by edmlab's restricted unpickler (nothing of it is run)."""
    from edmlab.io.nvlabs.unpickler import RestrictedUnpickler, UnsafePickleError

    with open(file, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{file}: {e}; edmlab runs no code from a pickle, so this file is not loaded; "
                                    f"expected {EXPECTED}") from None
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                RuntimeError, MemoryError, OverflowError, UnicodeDecodeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DetectorFileError(f"{file}: truncated, corrupt or not a pickle ({type(e).__name__}: {reason[:200]}); "
                                    f"expected {EXPECTED} — download it again") from None


def inspect_detector_file(path: str | Path) -> DetectorFile:
    """The TorchScript archive of a detector file and where it was found; nothing in the file is run.

    Errors: FileNotFoundError (says where to download the file), :class:`DetectorFileError` (a file that is not a
    detector: a torch.save state dict, a network snapshot, a pickle without exactly one TorchScript archive), the
    unpickler's :class:`~edmlab.io.nvlabs.UnsafePickleError` (a global outside the format) — each one line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"metrics.fid.detector=nvlabs needs NVlabs' Inception detector, not found at {file}: "
                                f"download {URL_PKL} (or the TorchScript {URL_PT}) and pass "
                                f"metrics.fid.detector_path=/path/to/inception-2015-12-05.pkl")
    with open(file, "rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC:
        names = _zip_names(file)
        if _is_torchscript(names):
            return DetectorFile(str(file), "torchscript", file.read_bytes(), "the file itself")
        what = _torch_save_hint(file) if names is not None and any(n.endswith("data.pkl") for n in names) \
            else "a ZIP file without TorchScript code"
        raise DetectorFileError(f"{file}: {what}; expected {EXPECTED}")
    obj = _read_pickle(file)
    found, classes, sources = [], [], {}
    _walk(obj, "pickle", found, classes)
    _collect_sources(obj, sources)
    distinct = list({hashlib.sha256(data).hexdigest(): (where, data) for where, data in found}.values())
    if not distinct:
        raise DetectorFileError(f"{file}: no TorchScript module inside ({_describe(obj, classes)}); "
                                f"expected {EXPECTED}")
    if len(distinct) > 1:
        raise DetectorFileError(f"{file}: {len(distinct)} different TorchScript archives inside (at "
                                f"{', '.join(w for w, _ in distinct[:3])}), expected one; expected {EXPECTED}")
    where, data = distinct[0]
    return DetectorFile(str(file), "pickle", data, where, list(dict.fromkeys(classes)), sources)


def _collect_sources(obj, sources: dict, depth: int = 0) -> None:
    """{class name: module_src} of the persistent objects (the unpickler keeps the text, never runs it)."""
    from edmlab.io.nvlabs.unpickler import Persistent, TorchModule

    if depth > 16:
        return
    if isinstance(obj, Persistent):
        if obj.module_src is not None:
            sources.setdefault(obj.class_name, obj.module_src)
        _collect_sources(obj.state, sources, depth + 1)
    elif isinstance(obj, TorchModule):
        _collect_sources(obj.state, sources, depth + 1)
    elif isinstance(obj, dict):
        for value in obj.values():
            _collect_sources(value, sources, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _collect_sources(value, sources, depth + 1)


@functools.lru_cache(maxsize=2)
def load_detector(path: str) -> torch.jit.ScriptModule:
    """The detector of ``inception-2015-12-05.pkl`` or ``.pt`` at ``path`` (CPU, eval mode), checked to give
    [1, 2048] features for one uint8 image [1, 3, 32, 32] with ``return_features=True``."""
    found = inspect_detector_file(path)
    file = found.path
    try:
        detector = torch.jit.load(io.BytesIO(found.archive), map_location="cpu").eval()
        with torch.no_grad():
            probe = detector(torch.zeros(PROBE_SHAPE, dtype=torch.uint8), return_features=True)
    except Exception as e:  # noqa: BLE001 (any failure of the archive is the file's)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DetectorFileError(f"{file}: the TorchScript module ({found.where}) fails on a uint8 image "
                                f"{list(PROBE_SHAPE)} with return_features=True ({type(e).__name__}: {reason[:200]}); "
                                f"expected {EXPECTED}") from None
    if not torch.is_tensor(probe) or tuple(probe.shape) != (1, FEATURE_DIM):
        shape = tuple(probe.shape) if torch.is_tensor(probe) else type(probe).__name__
        raise DetectorFileError(f"{file}: the detector gives features of shape {shape} for one image, expected "
                                f"(1, {FEATURE_DIM}) (NVlabs' inception-2015-12-05)")
    return detector


# --- detector files from torch-fidelity's network, for offline checks of the plumbing ------------------------------

class _AsNVlabsDetector(torch.nn.Module):
    """NVlabs' detector interface around a traced torch-fidelity InceptionV3 giving (pool3, unbiased logits):
    ``forward(img_uint8, return_features=False)`` → [N, 2048] features, or [N, 1008] softmax probabilities."""

    def __init__(self, traced: torch.nn.Module):
        super().__init__()
        self.net = traced

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pool, logits = self.net(img)
        if return_features:
            return pool
        return torch.softmax(logits, dim=1)


def fidelity_detector(weights_path: str | Path) -> torch.jit.ScriptModule:
    """torch-fidelity's InceptionV3 with the weights of ``weights_path`` (checked by
    :func:`edmlab.evaluation.metrics.inception.verify_weights`) as a TorchScript module with NVlabs' interface.

    Traced once on a [1, 3, 32, 32] uint8 image: torch-fidelity's TF1-style resize keeps the input size symbolic
    under tracing, so the module takes any H×W. For checks of the plumbing (tests/inception_fixtures.py writes it as a detector file)."""
    from edmlab.evaluation.metrics.inception import FEATURE_LOGITS, FEATURE_POOL
    from edmlab.evaluation.metrics.inception_weights import verify_weights

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE_POOL, FEATURE_LOGITS],
                                      feature_extractor_weights_path=verify_weights(weights_path)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(PROBE_SHAPE, dtype=torch.uint8), check_trace=False)
    return torch.jit.script(_AsNVlabsDetector(traced).eval())


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
