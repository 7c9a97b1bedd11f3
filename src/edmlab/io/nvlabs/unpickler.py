"""A restricted unpickler for NVlabs' ``torch_utils.persistence`` pickles: it reads them without running their code.

NVlabs/edm and NVlabs/edm2 pickle every object of a "persistent class" as the call

    torch_utils.persistence._reconstruct_persistent_obj(meta),  meta = {type, version, module_src, class_name, state}

and their unpickling *executes* ``module_src``, the source of the module that defined the class. Here that call
gives a :class:`Persistent` record of ``class_name`` and ``state`` (the object's ``__dict__``: ``_init_kwargs``,
``_parameters``, ``_buffers``, ``_modules``, attributes); ``module_src`` is kept as text and never executed or
compiled. Every other
global the file names must be one of ``ALLOWED`` (tensor/storage rebuilders, plain containers, numpy scalars and
arrays, torch dtypes, torch's module containers and dnnlib's EasyDict as inert stand-ins); anything else is refused
with an error that names it.
"""
import collections
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

RECONSTRUCT = ("torch_utils.persistence", "_reconstruct_persistent_obj")


class UnsafePickleError(ValueError):
    """The pickle names a global that an NVlabs network snapshot never contains; nothing of it was run."""


@dataclass
class Persistent:
    """An object of an NVlabs persistent class, as recorded in the pickle (never instantiated)."""

    class_name: str
    state: dict
    version: int | None = None
    module_src: str | None = field(default=None, repr=False)  # kept as text for inspection, never run

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})


@dataclass
class TorchModule:
    """A torch.nn container (ModuleDict, ModuleList, Sequential) of the pickle: its class name and ``__dict__``."""

    class_name: str
    state: dict = field(default_factory=dict)

    def __setstate__(self, state):
        self.state = dict(state) if isinstance(state, dict) else {}


class EasyDict(dict):
    """dnnlib.util.EasyDict of the pickle, read as a plain dict."""


def _container(name: str):
    """An inert stand-in class for torch.nn.<name>: the pickle creates it with NEWOBJ and fills it with BUILD."""

    def __new__(cls, *args, **kwargs):
        return TorchModule(name)

    return type(name, (), {"__new__": __new__})


def _reconstruct(meta) -> Persistent:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str) \
            or not isinstance(meta.get("state"), dict):
        raise UnsafePickleError(f"a persistent object whose meta is not {{type: 'class', class_name, state}} "
                                f"(got {type(meta).__name__} with keys {sorted(meta) if isinstance(meta, dict) else '-'})")
    src = meta.get("module_src")
    return Persistent(meta["class_name"], dict(meta["state"]), meta.get("version"),
                      src if isinstance(src, str) else None)


def _load_from_bytes(data: bytes):
    """A storage pickled by torch (``torch.save`` bytes), read with torch's own weights-only loader."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_core():
    import numpy._core.multiarray as multiarray  # numpy ≥ 2; older pickles name numpy.core.multiarray

    return multiarray


def _allowed() -> dict:
    from torch import _utils

    core = _numpy_core()
    allowed = {
        RECONSTRUCT: _reconstruct,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("torch._utils", "_rebuild_tensor_v2"): _utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _utils._rebuild_parameter_with_state,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("dnnlib.util", "EasyDict"): EasyDict,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = core.scalar
        allowed[(module, "_reconstruct")] = core._reconstruct
    for name in ("ModuleDict", "ModuleList", "Sequential"):
        allowed[("torch.nn.modules.container", name)] = _container(name)
    return allowed


ALLOWED = _allowed()


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come only from ``ALLOWED``."""

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafePickleError(f"refused global {module}.{name}: an NVlabs network snapshot holds only persistent "
                                f"NVlabs objects, tensors and plain containers")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refused persistent id {str(pid)[:60]!r}: a torch.save file, not an NVlabs pickle")


def read_pickle(path: str | Path):
    """The object of an NVlabs pickle, with persistent objects as :class:`Persistent` records.

    A missing file is a FileNotFoundError; a refused global, a truncated or corrupt file a one-line ValueError
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no NVlabs network pickle at {path}")
    expected = "an NVlabs/edm or edm2 network-snapshot pickle (network-snapshot-*.pkl, edm-*.pkl, edm2-*.pkl)"
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}; edmlab runs no code from a pickle, so this file is not loaded") \
                from None
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                RuntimeError, MemoryError, OverflowError, UnicodeDecodeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {reason}); expected "
                             f"{expected} — download it again") from None
