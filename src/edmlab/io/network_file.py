"""A self-describing network file and ``load()``: a trained denoiser in a notebook without Hydra or Lightning.

The file (``torch.save``) holds ``format``, the specs (``_target_`` dicts) of the raw network and of the
preconditioning, the data-dependent network keywords, the EMA weights and the resolved run config. ``load`` also
reads a Lightning checkpoint of ``edmlab.training.EDMModule`` (its EMA weights).

A file is data, never code: every file read here is unpickled with ``weights_only=True`` (tensors, numbers,
strings and containers; our formats need nothing else), and a ``_target_`` read from a file names one of
edmlab's own classes (``FILE_TARGETS``), never an arbitrary dotted path to import. Specs composed from the user's
own config (``conf/``) resolve any dotted path, as Hydra does.
"""
import inspect
import re
import warnings
from pathlib import Path

import torch

from edmlab.infra.files import atomic_torch_save
from edmlab.infra.spec import target_class, build

FORMAT = "edmlab-network-v1"
READS = ("an edmlab network file (network.pt) or a Lightning checkpoint (checkpoints/last.ckpt) written by "
         "src/train.py")


def _check_model_spec(model_spec, source) -> None:
    groups = ("network", "network_kwargs", "preconditioning")
    shape = model_spec.get("shape") if isinstance(model_spec, dict) else None
    if not (isinstance(model_spec, dict) and all(isinstance(model_spec.get(k), dict) for k in groups)
            and isinstance(shape, list) and all(isinstance(n, int) for n in shape)):
        found = sorted(map(str, model_spec)) if isinstance(model_spec, dict) else type(model_spec).__name__
        raise ValueError(f"{source}: its model spec is not an edmlab one (dicts {', '.join(groups)} and a shape "
                         f"list; found {found})")


def build_denoiser(model_spec: dict, source=None) -> torch.nn.Module:
    """The preconditioned network D(x; σ) of a model spec {network, network_kwargs, preconditioning}; ``source``:
    the file it was read from (its targets then come from ``FILE_TARGETS``), None for the user's own config.

    ``network_kwargs`` describe the data; a network with ``out_channels`` gets the preconditioning's
    ``out_channels_factor`` times the data's channels (iDDPM: 2, as NVlabs/edm)."""
    if source is not None:
        _check_model_spec(model_spec, source)
    kwargs = dict(model_spec["network_kwargs"])
    precond = target_class(model_spec["preconditioning"].get("_target_"), "preconditioning", source)
    if "out_channels" in kwargs:
        kwargs["out_channels"] *= getattr(precond, "out_channels_factor", 1)
    where = f"{source}: " if source is not None else ""
    try:
        net = build({**model_spec["network"], "_partial_": True}, role="network", source=source)(**kwargs)
    except TypeError as e:
        raise ValueError(f"{where}network {model_spec['network'].get('_target_')} does not fit the data "
                         f"({model_spec['network_kwargs']}): {e}. Use a UNet (network=digits_small/ddpmpp/ncsnpp/adm) "
                         f"for images and network=mlp for points (data=mixture)") from e
    try:
        return build(model_spec["preconditioning"], role="preconditioning", source=source, model=net)
    except TypeError as e:
        raise ValueError(f"{where}preconditioning {model_spec['preconditioning'].get('_target_')} does not take the "
                         f"keywords {model_spec['preconditioning']}: {e}") from e


def save_network(path: str | Path, denoiser: torch.nn.Module, model_spec: dict, config: dict | None = None) -> Path:
    """Write the network file of ``denoiser`` atomically: a reader or a crash sees the old file or the new one."""
    state = {k: v.detach().cpu() for k, v in denoiser.state_dict().items()}
    return atomic_torch_save({"format": FORMAT, "model": model_spec, "state_dict": state, "config": config}, path)


def _refusal(path: Path, error: Exception) -> str:
    """What ``weights_only`` refused in ``path``: the globals it names (read statically, none of them imported)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint (a bare pickle): torch's own reason below
        names = []
    if names:
        return f"it names {', '.join(sorted(names))}"
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
    return found.group(1).strip() if found else "weights_only refused it"


def read_plain(path: str | Path, expected: str = READS, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only, so unpickling
    imports and calls nothing that the file names. Every file edmlab writes (network.pt, checkpoints/last.ckpt,
    phema snapshots) is of that kind. A file that needs more, or that torch cannot read, is a one-line
    ValueError naming it and what was ``expected``."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol")  # a bare pickle, refused below
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on a file that is not one of ours
        if "Weights only load failed" in str(e):
            reason = f"it is not a plain-tensor edmlab file ({_refusal(path, e)}); nothing in it was run"
        else:
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            reason = f"torch.load failed with {type(e).__name__}: {first_line}; nothing in it was run"
        raise ValueError(f"cannot read {path}: {reason}. Expected {expected}") from None


def _read(path: Path) -> tuple[dict, dict, dict | None]:
    """(model spec, denoiser state_dict, resolved training config) of a network file, a training checkpoint or an
    NVlabs/edm or edm2 network pickle (``.pkl``, read by :mod:`edmlab.io.nvlabs` without running its code)."""
    if path.suffix == ".pkl":
        from edmlab.io.nvlabs import read_network_pickle  # the pickle reader loads only for a .pkl

        return (*read_network_pickle(path), None)
    blob = read_plain(path)
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        return blob["model"], blob["state_dict"], blob.get("config")
    if isinstance(blob, dict) and isinstance(blob.get("edmlab"), dict) and isinstance(blob.get("state_dict"), dict):
        prefix = "ema."
        state = {k[len(prefix):]: v for k, v in blob["state_dict"].items() if k.startswith(prefix)}
        return blob["edmlab"].get("model"), state, blob["edmlab"].get("config")
    raise ValueError(f"{path} is not an edmlab network file or an edmlab training checkpoint "
                     f"(no 'format': {FORMAT!r} and no 'edmlab' entry); NVlabs network pickles load by their .pkl name")


def load_weights(denoiser: torch.nn.Module, state: dict, path) -> None:
    """Load ``state`` into ``denoiser``: every key present on both sides, each a tensor of equal shape, else a
    ValueError."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: its weights are not a dict of tensors")
    ours = denoiser.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{path}: its weights do not fit the architecture it describes "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]}, other shape {shapes[:3]})")
    denoiser.load_state_dict(state, strict=True)


def network_file(path: str | Path) -> Path:
    """The file a run is loaded from: ``path`` itself, or a run directory's network.pt, else checkpoints/last.ckpt."""
    path = Path(path)
    if path.is_dir():
        found = next((c for c in (path / "network.pt", path / "checkpoints" / "last.ckpt") if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path} holds neither network.pt nor checkpoints/last.ckpt")
        return found
    return path


def load(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained denoiser ``D(x, sigma, class_labels=None)`` (EMA weights, eval mode) of a network file, a checkpoint
    or an NVlabs/edm or edm2 network pickle (``*.pkl``, read without running its code; float32); it carries ``sigma_min``, ``sigma_max``, ``round_sigma``, ``label_dim`` and ``model_spec`` for ``edmlab.sample``,
    and ``training_config`` (the resolved config of the run that trained it, or None)."""
    path = network_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"no network file at {path}; pass the network.pt or checkpoints/last.ckpt of a run, "
                                f"or an NVlabs network-snapshot .pkl")
    model_spec, state, config = _read(path)
    denoiser = build_denoiser(model_spec, source=path)
    load_weights(denoiser, state, path)
    denoiser.model_spec = model_spec
    denoiser.training_config = config if isinstance(config, dict) else None
    return denoiser.eval().requires_grad_(False).to(device)


TRAINING_ONLY = ("dropout", "label_dropout")  # network keywords that do not change the weights
TUNABLE = ("preconditioning.boundary_sigma",)  # what fine-tuning may change: an EDM net tunes into a consistency model


def init_from(path: str | Path, model_spec: dict, *denoisers: torch.nn.Module) -> None:
    """Fine-tuning: copy the weights of a trained network (network.pt, run dir, checkpoint or NVlabs ``.pkl``) into
    ``denoisers`` built from ``model_spec``. The data shape, preconditioning and architecture must be the same
    (dropout may differ); else a ValueError names each difference."""
    source = load(path)
    shape, theirs = list(model_spec["shape"]), list(source.model_spec["shape"])
    if shape != theirs:
        raise ValueError(f"init_from={path} is a network for data of shape {theirs} (channels, resolution), this "
                         f"run's data has shape {shape}: tune it on data of its own shape, or init from a network "
                         f"trained on this data")
    ours, other = _architecture(model_spec), _architecture(source.model_spec, path)
    differ = [f"{k}: file {other.get(k)!r} vs run {ours.get(k)!r}" for k in sorted(set(ours) | set(other))
              if ours.get(k) != other.get(k) and k not in TUNABLE]
    if differ:
        raise ValueError(f"init_from={path} does not fit this run ({'; '.join(differ[:6])}): choose the data, "
                         f"network, preconditioning and augment options it was trained with")
    state = source.state_dict()
    for denoiser in denoisers:
        load_weights(denoiser, state, path)


def _architecture(model_spec: dict, source=None) -> dict:
    """What fixes the weights' meaning: data shape, and the network's and preconditioning's keywords with their
    defaults filled in (lists as lists); ``source`` as for ``build_denoiser``."""
    out = {"shape": list(model_spec["shape"])}
    for group, spec, extra in (("network", model_spec["network"], model_spec["network_kwargs"]),
                               ("preconditioning", model_spec["preconditioning"], {})):
        params = inspect.signature(target_class(spec["_target_"], group, source)).parameters.values()
        given = {**{p.name: p.default for p in params if p.default is not inspect.Parameter.empty and p.name != "model"},
                 **{k: v for k, v in spec.items() if k != "_partial_"}, **extra}
        out.update({f"{group}.{k}": list(v) if isinstance(v, tuple) else v for k, v in given.items()
                    if k not in TRAINING_ONLY})
    return out
