"""NVlabs network snapshots as edmlab model specs: which edmlab class stands for which NVlabs class, and how the
recorded constructor keywords and state become a spec and a state dict that load strictly.

NVlabs/edm (``training/networks.py``): ``EDMPrecond``, ``VPPrecond``, ``VEPrecond``, ``iDDPMPrecond`` around
``SongUNet`` or ``DhariwalUNet``; NVlabs/edm2 (``training/networks_edm2.py``): ``Precond`` around ``UNet``. Both
store the network of a snapshot under ``ema`` (edm: a dict also holding ``loss_fn``, ``augment_pipe``,
``dataset_kwargs``; edm2: an EasyDict also holding ``encoder``, ``loss_fn``, ``dataset_kwargs``).
"""
import importlib
import inspect
from pathlib import Path

import numpy as np
import torch

from edmlab.infra.spec import file_target
from edmlab.io.nvlabs.unpickler import Persistent, TorchModule, UnsafePickleError, read_pickle

# NVlabs precond class → (edmlab class, the attributes of the NVlabs object that are its constructor keywords)
EDM_PRECONDS = {
    "EDMPrecond": ("edmlab.EDMPrecond", ("sigma_data", "sigma_min", "sigma_max")),
    "VPPrecond": ("edmlab.VPPrecond", ("beta_d", "beta_min", "M", "epsilon_t")),
    "VEPrecond": ("edmlab.VEPrecond", ("sigma_min", "sigma_max")),
    "iDDPMPrecond": ("edmlab.iDDPMPrecond", ("C_1", "C_2", "M")),
}
EDM_NETS = {"SongUNet": "edmlab.nets.SongUNet", "DhariwalUNet": "edmlab.nets.DhariwalUNet"}
EDM_LAYERS = {"Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding"}
EDM2_PRECOND, EDM2_NET = "edmlab.EDM2Precond", "edmlab.nets.EDM2UNet"
EDM2_LAYERS = {"MPFourier", "MPConv", "Block"}
DATA_KEYS = ("img_resolution", "in_channels", "out_channels", "label_dim", "augment_dim")


def _plain(value):
    """Recorded keywords as plain Python values (numpy scalars and EasyDicts become floats, ints, dicts)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def state_dict(record, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``state_dict()`` a module recorded in the pickle would give: parameters, persistent buffers, submodules."""
    state = record.state
    skip = state.get("_non_persistent_buffers_set") or set()
    tensors = {**(state.get("_parameters") or {}), **{k: v for k, v in (state.get("_buffers") or {}).items()
                                                       if k not in skip}}
    out = {}
    for name, value in tensors.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise UnsafePickleError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
        if value is not None:
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None and not isinstance(child, (Persistent, TorchModule)):
            raise UnsafePickleError(f"submodule {prefix}{name} is a {type(child).__name__}, not a module")
        if child is not None:
            out.update(state_dict(child, f"{prefix}{name}."))
    return out


def _classes(record) -> set[str]:
    names = {record.class_name} if isinstance(record, Persistent) else set()
    for child in (record.state.get("_modules") or {}).values():
        if isinstance(child, (Persistent, TorchModule)):
            names |= _classes(child)
    return names


def _describe(obj) -> str:
    if isinstance(obj, Persistent):
        return f"a {obj.class_name} object"
    if isinstance(obj, dict):
        keys = sorted(map(str, obj))
        hint = " (a StyleGAN generator/discriminator pickle)" if {"G_ema", "D"} & set(keys) else ""
        return f"a dict with keys {keys[:8]}{hint}"
    return f"a {type(obj).__name__}"


def _check_keywords(path: Path, target: str, kwargs: dict):
    name = target.rpartition(".")[2]
    params = inspect.signature(file_target(target, "network", path)).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"{path}: the network was built with {unknown}, which edmlab's {name} does not take; "
                         f"this NVlabs network variant is not supported")


def _edm_spec(path: Path, ema: Persistent) -> dict:
    precond_target, keys = EDM_PRECONDS[ema.class_name]
    model = (ema.state.get("_modules") or {}).get("model")
    if not isinstance(model, Persistent) or model.class_name not in EDM_NETS:
        found = model.class_name if isinstance(model, Persistent) else type(model).__name__
        raise ValueError(f"{path}: {ema.class_name}.model is {found}; expected one of {sorted(EDM_NETS)} (NVlabs/edm)")
    kwargs = _plain(model.init_kwargs) or {
        k: v for k, v in _plain(ema.init_kwargs).items() if k not in ("img_channels", "use_fp16", "model_type", *keys)}
    if not kwargs:
        raise ValueError(f"{path}: {model.class_name} carries no _init_kwargs, so its architecture is unknown")
    channels = int(ema.state["img_channels"])
    factor = file_target(precond_target, "preconditioning", path).out_channels_factor  # iDDPM: 2 (learned variance)
    kwargs.setdefault("in_channels", channels)
    kwargs.setdefault("out_channels", factor * channels)
    kwargs.setdefault("augment_dim", 0)
    if kwargs["out_channels"] != factor * channels:
        raise ValueError(f"{path}: {ema.class_name} around a {model.class_name} with out_channels="
                         f"{kwargs['out_channels']}, expected {factor * channels} for {channels} image channels")
    network_kwargs = {k: kwargs.pop(k) for k in DATA_KEYS}
    network_kwargs["out_channels"] = channels
    _check_keywords(path, EDM_NETS[model.class_name], {**kwargs, **network_kwargs})
    precond = {"_target_": precond_target, **{k: _plain(ema.state[k]) for k in keys}}
    for k in ("sigma_min", "sigma_max", "sigma_data", "beta_d", "beta_min", "epsilon_t", "C_1", "C_2"):
        if k in precond:
            precond[k] = float(precond[k])
    return {"network": {"_target_": EDM_NETS[model.class_name], "_partial_": True, **kwargs},
            "network_kwargs": network_kwargs, "preconditioning": precond}


def _edm2_spec(path: Path, ema: Persistent, state: dict) -> dict:
    try:
        importlib.import_module(EDM2_NET.rpartition(".")[0])
    except ImportError as e:
        raise ValueError(f"{path} is an NVlabs/edm2 network (Precond around the magnitude-preserving UNet), which "
                         f"needs edmlab's network=edm2 ({EDM2_NET}): not available here ({e})") from None
    unet = (ema.state.get("_modules") or {}).get("unet")
    if not isinstance(unet, Persistent) or unet.class_name != "UNet":
        raise ValueError(f"{path}: edm2 Precond.unet is {_describe(unet)}; expected an NVlabs/edm2 UNet")
    kwargs = _plain(unet.init_kwargs)
    if not kwargs:
        raise ValueError(f"{path}: the edm2 UNet carries no _init_kwargs, so its architecture is unknown")
    channels = int(kwargs.pop("img_channels", ema.state["img_channels"]))
    network_kwargs = dict(img_resolution=int(kwargs.pop("img_resolution")), in_channels=channels,
                          out_channels=channels, label_dim=int(kwargs.pop("label_dim")), augment_dim=0)
    precond = {"_target_": EDM2_PRECOND, "sigma_data": float(_plain(ema.state["sigma_data"])),
               "logvar_channels": int(state["logvar_fourier.freqs"].shape[0])}
    return {"network": {"_target_": EDM2_NET, "_partial_": True, **kwargs},
            "network_kwargs": network_kwargs, "preconditioning": precond}


def _encoder(file: dict) -> dict | None:
    """What edm2's ``encoder`` of the snapshot does (pixels ↔ the network's space), for the user to see."""
    encoder = file.get("encoder")
    if not isinstance(encoder, Persistent):
        return None
    keep = {k: _plain(v.tolist() if isinstance(v, np.ndarray) else v) for k, v in encoder.state.items()
            if k in ("vae_name", "scale", "bias", "batch_size")}
    return {"class_name": encoder.class_name, **keep}


def read_network_pickle(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model spec, state dict) of an NVlabs/edm or edm2 network-snapshot pickle, read without running its code.

    The spec is edmlab's ({network, network_kwargs, preconditioning, shape}) plus ``source``: the file, NVlabs'
    class names, ``use_fp16``, ``dataset_kwargs`` and (edm2) the ``encoder``."""
    path = Path(path)
    file = read_pickle(path)
    ema = file.get("ema") if isinstance(file, dict) else None
    if not isinstance(ema, Persistent):
        raise ValueError(f"{path} is not an NVlabs network snapshot: expected a dict whose 'ema' is a "
                         f"{'/'.join(EDM_PRECONDS)} (NVlabs/edm) or Precond (NVlabs/edm2), found {_describe(file)}"
                         + (f" whose 'ema' is {_describe(ema)}" if isinstance(file, dict) and "ema" in file else ""))
    if ema.class_name in EDM_PRECONDS:
        known, family = EDM_LAYERS | set(EDM_NETS) | {ema.class_name}, "NVlabs/edm"
    elif ema.class_name == "Precond":
        known, family = EDM2_LAYERS | {"UNet", "Precond"}, "NVlabs/edm2"
    else:
        raise ValueError(f"{path}: 'ema' is {_describe(ema)}; expected one of {', '.join(EDM_PRECONDS)} (NVlabs/edm) "
                         f"or Precond (NVlabs/edm2)")
    unknown = sorted(_classes(ema) - known)
    if unknown:
        raise UnsafePickleError(f"{path}: the {ema.class_name} holds classes {unknown} that {family}'s networks do not "
                                f"have; edmlab cannot stand in for them (it runs no code from a pickle)")
    try:
        state = state_dict(ema)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}; expected an NVlabs network's parameters, buffers and submodules") \
            from None
    spec = _edm_spec(path, ema) if family == "NVlabs/edm" else _edm2_spec(path, ema, state)
    channels, resolution = spec["network_kwargs"]["in_channels"], spec["network_kwargs"]["img_resolution"]
    spec["shape"] = [channels, resolution, resolution]
    inner = next(m for m in (ema.state.get("_modules") or {}).values() if isinstance(m, Persistent))
    spec["source"] = {"format": f"{family} network snapshot", "file": str(path), "class_name": ema.class_name,
                      "network": inner.class_name, "use_fp16": bool(_plain(ema.state.get("use_fp16", False))),
                      "dataset_kwargs": _plain(dict(file.get("dataset_kwargs") or {})), "encoder": _encoder(file)}
    return spec, state
