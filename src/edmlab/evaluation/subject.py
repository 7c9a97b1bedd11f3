"""What an evaluation job samples from: a trained network (``ckpt=<run>``) with the data set it was trained on and
the codec that turns its samples into pixels, or the exact denoiser of a Gaussian-mixture bench
(``ckpt=bench:<preset>``)."""
from dataclasses import dataclass, field

import torch

from edmlab.codec import Codec, build_codec
from edmlab.data.mixture import GaussianMixture
from edmlab.design.guidance import Unconditional
from edmlab.infra.spec import build
from edmlab.io.network_file import load, network_file
from edmlab.io.snapshots import load_reconstructed

BENCH = "bench:"
SCORED_DATASETS = ("DigitsDataset", "PointsDataset")


def bench_presets() -> dict:
    from edmlab.data.points import PRESETS

    return PRESETS


def bench_mixture(name: str) -> GaussianMixture:
    """The exact mixture of ``ckpt=bench:<name>``."""
    presets = bench_presets()
    if name not in presets:
        raise ValueError(f"unknown bench preset ckpt=bench:{name}; choose one of "
                         f"{', '.join(f'bench:{p}' for p in sorted(presets))}")
    return GaussianMixture(**presets[name]())


def component(mixture: GaussianMixture, k: int) -> GaussianMixture:
    """Component k alone: the data a denoiser conditioned on the one-hot class k generates."""
    return GaussianMixture(mixture.means[k : k + 1], mixture.stds[k : k + 1])


@dataclass
class Subject:
    """A denoiser with its sample shape and label count, the data set it was trained on (when the metrics know
    it), the exact mixture of that data (bench and points models) and the codec of its samples (``codec.pixels``
    turns them into the images that every metric, grid and file is made from; pixels: the identity)."""

    denoiser: object
    shape: tuple
    label_dim: int
    device: torch.device
    kind: str
    dataset: object = None
    mixture: GaussianMixture | None = None
    codec: Codec = field(default_factory=build_codec)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


def training_dataset(config: dict | None, source):
    """The training data set, rebuilt when a data-set metric exists for it (digits, mixture points), else None.

    ``config`` was read from the file ``source``, so its data set spec is built flat and only as one of edmlab's
    own data sets (``edmlab.io.network_file.FILE_TARGETS``): Hydra's recursive ``instantiate`` would import and call any
    ``_target_`` the file names, nested ones included."""
    spec = ((config or {}).get("data") or {}).get("dataset")
    if not isinstance(spec, dict) or str(spec.get("_target_", "")).rsplit(".", 1)[-1] not in SCORED_DATASETS:
        return None
    return build(spec, role="data set", source=source)


RUNTIME = ("batch_size", "dtype")  # codec settings of the job itself (how the VAE runs), not of the model


def subject_codec(denoiser, source, asked: dict | None = None) -> Codec:
    """The codec of the samples of ``denoiser`` (read from ``source``), checked against their shape and loaded (a VAE
    that does not load fails before sampling). ``asked``: the job's ``codec`` group; its ``batch_size`` and
    ``dtype`` apply, its ``vae_path`` names the VAE folder.

    - An NVlabs/edm2 pickle: its ``encoder`` (``edmlab.io.nvlabs.encoders.pickle_codec``; an img512 one needs
      ``codec.vae_path``).
    - A run of src/train.py: the ``codec`` of its config (pixels when it has none), ``codec.vae_path`` replacing
      the folder it was trained with when given.

    ``codec=sd_vae`` asked of a model that makes pixels is refused."""
    from edmlab.io.nvlabs.encoders import pickle_codec

    asked = dict(asked or {})
    runtime = {k: asked[k] for k in RUNTIME if k in asked}
    vae_path = asked.get("vae_path")
    nvlabs = denoiser.model_spec.get("source")
    if isinstance(nvlabs, dict):
        codec = pickle_codec(nvlabs.get("encoder"), source, vae_path, **runtime)
    else:
        trained = dict((denoiser.training_config or {}).get("codec") or {"name": "pixels"})
        if trained.get("name", "pixels") == "pixels":
            trained.pop("vae_path", None)
        elif vae_path is not None:
            trained["vae_path"] = vae_path
        codec = build_codec({**trained, **runtime})
    if asked.get("name", "pixels") != "pixels" and codec.name != asked["name"]:
        raise ValueError(f"codec={asked['name']} was asked, but {source} makes {codec.name} (its own codec decides); "
                         f"drop codec={asked['name']}")
    codec.check_latents(tuple(denoiser.model_spec["shape"]), source)
    return codec.load()


def load_subject(ckpt: str, device: torch.device, class_label: int | None = None, ema_std: float | None = None,
                 at_kimg: float | None = None, codec: dict | None = None) -> Subject:
    """``ema_std``: the post-hoc EMA of that relative std, reconstructed from the snapshots of an ema=power run;
    ``codec``: the job's ``codec`` group (``subject_codec``); None: the samples stay in the network's space (the
    identity codec; e.g. ``edmlab.cli.search_steps``, which compares samples and decodes nothing)."""
    if ckpt.startswith(BENCH) and ema_std is not None:
        raise ValueError(f"ema.std={ema_std} reconstructs a trained run's EMA; {ckpt} is an exact denoiser: drop ema.std")
    if ckpt.startswith(BENCH):
        if (codec or {}).get("name", "pixels") != "pixels":
            raise ValueError(f"codec={codec['name']} decodes latents, but {ckpt} is an exact denoiser of points: "
                             f"drop codec={codec['name']}")
        mixture = bench_mixture(ckpt[len(BENCH):])
        label_dim = mixture.num_components if class_label is not None else 0
        return Subject(mixture, (mixture.dim,), label_dim, torch.device("cpu"), ckpt, mixture=mixture)
    denoiser = load(ckpt, device) if ema_std is None else load_reconstructed(ckpt, ema_std, at_kimg, device)
    source = network_file(ckpt) if ema_std is None else ckpt
    pixels = subject_codec(denoiser, source, codec) if codec is not None else build_codec()
    dataset = training_dataset(denoiser.training_config, source)
    kind = type(dataset).__name__ if dataset is not None else "network"
    return Subject(denoiser, tuple(denoiser.model_spec["shape"]), int(getattr(denoiser, "label_dim", 0)), device,
                   kind, dataset, getattr(dataset, "mixture", None), pixels)


def load_guide(guide: str, denoiser, device="cpu"):
    """The guide of ``src/eval.py guide=...``: ``uncond`` (the same network without labels, CFG) or a run dir /
    network file / checkpoint read by ``edmlab.load`` (autoguidance: an earlier or smaller network)."""
    if str(guide) == "uncond":
        return Unconditional(denoiser)
    return load(guide, device)
