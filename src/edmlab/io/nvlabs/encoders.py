"""The ``encoder`` of an NVlabs/edm2 network snapshot as an edmlab codec, read without running the pickle's code.

edm2's snapshots (``training/training_loop.py``) hold ``encoder`` next to ``ema``: a persistent
``StandardRGBEncoder`` (pixel models: ``codec=pixels``) or ``StabilityVAEEncoder`` (ImageNet-512: ``codec=sd_vae``).
The latter's recorded state is ``vae_name``, ``batch_size`` and the float32 per-channel ``scale`` and ``bias`` of

    scale = final_std / raw_std,  bias = final_mean − raw_mean·scale   (``training/encoders.py``),

with ``_vae`` None (the VAE weights are not in the pickle) and ``_init_kwargs`` the keywords it was built with
(empty for edm2's own runs, which take the defaults). The settings are the recorded keywords over EDM2's defaults
when they give the recorded scale and bias exactly; otherwise final mean 0 and std 0.5 and the raw statistics that
the recorded scale and bias imply (raw_std = final_std/scale, raw_mean = (final_mean − bias)/scale).
"""
import numpy as np

from edmlab.codec.sd_vae import CONFIG, RAW_MEAN, RAW_STD, WEIGHTS, normalisation
from edmlab.io.nvlabs.unpickler import Persistent

ENCODERS = ("StandardRGBEncoder", "StabilityVAEEncoder")
DEFAULTS = dict(raw_mean=list(RAW_MEAN), raw_std=list(RAW_STD), final_mean=0.0, final_std=0.5)


def _record(encoder) -> tuple[str | None, dict]:
    """(class name, state) of a Persistent record, or of ``networks._encoder``'s summary dict, or (None, {})."""
    if encoder is None:
        return None, {}
    if isinstance(encoder, Persistent):
        return encoder.class_name, dict(encoder.state)
    if isinstance(encoder, dict) and "class_name" in encoder:
        return encoder["class_name"], {k: v for k, v in encoder.items() if k != "class_name"}
    return type(encoder).__name__, {}


def _vector(state: dict, key: str, source) -> np.ndarray:
    value = state.get(key)
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        array = np.empty(0, np.float32)
    if value is None or array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)) or \
            (key == "scale" and not np.all(array > 0)):
        raise ValueError(f"{source}: the StabilityVAEEncoder's {key} is {value!r}; expected a float32 vector of one "
                         f"{'positive ' if key == 'scale' else ''}value per latent channel (NVlabs/edm2 "
                         f"training/encoders.py)")
    return array


def _statistics(state: dict, scale: np.ndarray, bias: np.ndarray) -> dict:
    recorded = {k: v for k, v in dict(state.get("_init_kwargs") or {}).items() if k in DEFAULTS}
    settings = {k: (np.asarray(v, np.float64).tolist() if k.startswith("raw") else float(v))
                for k, v in {**DEFAULTS, **recorded}.items()}
    if len(settings["raw_mean"]) == len(scale) == len(settings["raw_std"]):
        again = normalisation(settings["raw_mean"], settings["raw_std"], settings["final_mean"], settings["final_std"])
        if np.array_equal(again[0], scale) and np.array_equal(again[1], bias):
            return settings
    final_mean, final_std = 0.0, 0.5
    return dict(raw_mean=((final_mean - bias.astype(np.float64)) / scale).tolist(),
                raw_std=(final_std / scale.astype(np.float64)).tolist(), final_mean=final_mean, final_std=final_std)


def codec_settings(encoder, source) -> dict:
    """The ``codec`` config group standing for the snapshot's ``encoder`` (a :class:`Persistent` record, or the
    ``spec["source"]["encoder"]`` summary that ``networks.read_network_pickle`` gives): ``{"name": "pixels"}`` for
    none or a ``StandardRGBEncoder``; for a ``StabilityVAEEncoder`` ``{"name": "sd_vae", "vae_path": None,
    raw_mean, raw_std, final_mean, final_std, batch_size, "vae_name"}`` (vae_name: what the pickle names, to be
    given as a local folder). ``source`` names the file in errors."""
    name, state = _record(encoder)
    if name in (None, "StandardRGBEncoder"):
        return {"name": "pixels"}
    if name != "StabilityVAEEncoder":
        raise ValueError(f"{source}: its encoder is a {name}; edmlab maps only NVlabs/edm2's {' and '.join(ENCODERS)}")
    scale, bias = _vector(state, "scale", source), _vector(state, "bias", source)
    if scale.shape != bias.shape:
        raise ValueError(f"{source}: the StabilityVAEEncoder's scale has {scale.size} channels but its bias "
                         f"{bias.size}; expected one value of each per latent channel")
    batch = state.get("batch_size", 8)
    batch = int(batch) if isinstance(batch, (int, np.integer)) and int(batch) >= 1 else 8
    return dict(name="sd_vae", vae_path=None, **_statistics(state, scale, bias), batch_size=batch,
                vae_name=str(state.get("vae_name", "stabilityai/sd-vae-ft-mse")))


def pickle_codec(encoder, source, vae_path=None, **overrides):
    """The edmlab codec of the snapshot's ``encoder`` (see :func:`codec_settings`), its VAE read from the local
    folder ``vae_path``; ``overrides`` (batch_size, dtype) replace the recorded settings. A latent model without
    ``vae_path`` is a one-line ValueError naming the file and the folder it needs."""
    from edmlab.codec import build_codec

    settings = codec_settings(encoder, source)
    if settings["name"] == "pixels":
        return build_codec({"name": "pixels", **{k: v for k, v in overrides.items() if k in ("batch_size", "dtype")}})
    vae_name = settings.pop("vae_name")
    if vae_path is None or str(vae_path) in ("", "???"):
        raise ValueError(f"{source} generates latents of the VAE {vae_name} (a StabilityVAEEncoder), which need "
                         f"decoding: set codec.vae_path=<local folder with {CONFIG} + {WEIGHTS} of {vae_name}>")
    return build_codec({**settings, **overrides, "vae_path": vae_path})
