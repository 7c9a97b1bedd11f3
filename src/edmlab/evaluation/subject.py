"""What an evaluation job samples from: a trained network (``ckpt=<run>``) with the data set it was trained on,
or the exact denoiser of a Gaussian-mixture bench (``ckpt=bench:<preset>``)."""
from dataclasses import dataclass

import torch

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
    it) and the exact mixture of that data (bench and points models)."""

    denoiser: object
    shape: tuple
    label_dim: int
    device: torch.device
    kind: str
    dataset: object = None
    mixture: GaussianMixture | None = None

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


def load_subject(ckpt: str, device: torch.device, class_label: int | None = None, ema_std: float | None = None,
                 at_kimg: float | None = None) -> Subject:
    """``ema_std``: the post-hoc EMA of that relative std, reconstructed from the snapshots of an ema=power run."""
    if ckpt.startswith(BENCH) and ema_std is not None:
        raise ValueError(f"ema.std={ema_std} reconstructs a trained run's EMA; {ckpt} is an exact denoiser: drop ema.std")
    if ckpt.startswith(BENCH):
        mixture = bench_mixture(ckpt[len(BENCH):])
        label_dim = mixture.num_components if class_label is not None else 0
        return Subject(mixture, (mixture.dim,), label_dim, torch.device("cpu"), ckpt, mixture=mixture)
    denoiser = load(ckpt, device) if ema_std is None else load_reconstructed(ckpt, ema_std, at_kimg, device)
    dataset = training_dataset(denoiser.training_config, network_file(ckpt) if ema_std is None else ckpt)
    kind = type(dataset).__name__ if dataset is not None else "network"
    return Subject(denoiser, tuple(denoiser.model_spec["shape"]), int(getattr(denoiser, "label_dim", 0)), device,
                   kind, dataset, getattr(dataset, "mixture", None))


def load_guide(guide: str, denoiser, device="cpu"):
    """The guide of ``src/eval.py guide=...``: ``uncond`` (the same network without labels, CFG) or a run dir /
    network file / checkpoint read by ``edmlab.load`` (autoguidance: an earlier or smaller network)."""
    if str(guide) == "uncond":
        return Unconditional(denoiser)
    return load(guide, device)
