"""A self-describing network file and ``load()``: a trained denoiser in a notebook without Hydra or Lightning.

The file (``torch.save``) holds ``format``, the specs (``_target_`` dicts) of the raw network and of the
preconditioning, the data-dependent network keywords, the EMA weights and the resolved run config. ``load`` also
reads a Lightning checkpoint of ``edmlab.lightning.EDMModule`` (its EMA weights).
"""
import functools
import importlib
import inspect
from pathlib import Path

import torch

FORMAT = "edmlab-network-v1"


def resolve(target: str):
    """The object named by a dotted ``_target_`` path."""
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build(spec: dict, **extra):
    """Instantiate a ``{'_target_': 'pkg.Class', **kwargs}`` spec as Hydra's ``instantiate`` does for a flat spec:
    with ``_partial_: true`` the result is ``functools.partial(Class, **kwargs)``, to be called with what is known
    later (a network spec waits for the data's keywords)."""
    spec = dict(spec)
    target = resolve(spec.pop("_target_"))
    if spec.pop("_partial_", False):
        return functools.partial(target, **spec, **extra)
    return target(**spec, **extra)


def build_denoiser(model_spec: dict) -> torch.nn.Module:
    """The preconditioned network D(x; σ) of a model spec {network, network_kwargs, preconditioning}.

    ``network_kwargs`` describe the data; a network with ``out_channels`` gets the preconditioning's
    ``out_channels_factor`` times the data's channels (iDDPM: 2, as NVlabs/edm)."""
    kwargs = dict(model_spec["network_kwargs"])
    if "out_channels" in kwargs:
        precond = resolve(model_spec["preconditioning"]["_target_"])
        kwargs["out_channels"] *= getattr(precond, "out_channels_factor", 1)
    try:
        net = build({**model_spec["network"], "_partial_": True})(**kwargs)
    except TypeError as e:
        raise ValueError(f"network {model_spec['network'].get('_target_')} does not fit the data "
                         f"({model_spec['network_kwargs']}): {e}. Use a UNet (network=digits_small/ddpmpp/ncsnpp/adm) "
                         f"for images and network=mlp for points (data=mixture)") from e
    return build(model_spec["preconditioning"], model=net)


def save_network(path: str | Path, denoiser: torch.nn.Module, model_spec: dict, config: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in denoiser.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, "model": model_spec, "state_dict": state, "config": config}, tmp)
    tmp.replace(path)
    return path


def _read(path: Path) -> tuple[dict, dict, dict | None]:
    """(model spec, denoiser state_dict, resolved training config) of a network file, a training checkpoint or an
    NVlabs/edm or edm2 network pickle (``.pkl``, read by :mod:`edmlab.nvlabs` without running its code)."""
    if path.suffix == ".pkl":
        from .nvlabs import read_network_pickle

        return (*read_network_pickle(path), None)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"cannot read {path}: {e}. Expected an edmlab network file (network.pt) or a Lightning "
                         f"checkpoint (checkpoints/last.ckpt) written by src/train.py") from e
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        return blob["model"], blob["state_dict"], blob.get("config")
    if isinstance(blob, dict) and "edmlab" in blob:
        prefix = "ema."
        state = {k[len(prefix):]: v for k, v in blob["state_dict"].items() if k.startswith(prefix)}
        return blob["edmlab"]["model"], state, blob["edmlab"].get("config")
    raise ValueError(f"{path} is not an edmlab network file or an edmlab training checkpoint "
                     f"(no 'format': {FORMAT!r} and no 'edmlab' entry); NVlabs network pickles load by their .pkl name")


def load_weights(denoiser: torch.nn.Module, state: dict, path) -> None:
    """Load ``state`` into ``denoiser``: every key present on both sides, each shape equal, else a ValueError."""
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
    denoiser = build_denoiser(model_spec)
    load_weights(denoiser, state, path)
    denoiser.model_spec = model_spec
    denoiser.training_config = config if isinstance(config, dict) else None
    return denoiser.eval().requires_grad_(False).to(device)


TRAINING_ONLY = ("dropout", "label_dropout")  # network keywords that do not change the weights


def init_from(path: str | Path, model_spec: dict, *denoisers: torch.nn.Module) -> None:
    """Fine-tuning: copy the weights of a trained network (network.pt, run dir, checkpoint or NVlabs ``.pkl``) into
    ``denoisers`` built from ``model_spec``. The data shape, preconditioning and architecture must be the same
    (dropout may differ); else a ValueError names each difference."""
    source = load(path)
    ours, other = _architecture(model_spec), _architecture(source.model_spec)
    differ = [f"{k}: file {other.get(k)!r} vs run {ours.get(k)!r}" for k in sorted(set(ours) | set(other))
              if ours.get(k) != other.get(k)]
    if differ:
        raise ValueError(f"init_from={path} does not fit this run ({'; '.join(differ[:6])}): choose the data, "
                         f"network, preconditioning and augment options it was trained with")
    state = source.state_dict()
    for denoiser in denoisers:
        load_weights(denoiser, state, path)


def _architecture(model_spec: dict) -> dict:
    """What fixes the weights' meaning: data shape, and the network's and preconditioning's keywords with their
    defaults filled in (lists as lists)."""
    out = {"shape": list(model_spec["shape"])}
    for group, spec, extra in (("network", model_spec["network"], model_spec["network_kwargs"]),
                               ("preconditioning", model_spec["preconditioning"], {})):
        params = inspect.signature(resolve(spec["_target_"])).parameters.values()
        given = {**{p.name: p.default for p in params if p.default is not inspect.Parameter.empty and p.name != "model"},
                 **{k: v for k, v in spec.items() if k != "_partial_"}, **extra}
        out.update({f"{group}.{k}": list(v) if isinstance(v, tuple) else v for k, v in given.items()
                    if k not in TRAINING_ONLY})
    return out
