"""The evaluation job of ``src/eval.py``: draw samples from a trained network, or from the exact denoiser of a
Gaussian-mixture bench (``ckpt=bench:<preset>``), with any sampler; score them; fill the job directory with

- ``metrics.json``: the scores, ``nfe``, ``sample_sec`` and ``metric_sec``, ``num_samples``, a ``config`` summary,
  ``status`` ("ok", or "failed" with ``error``) and the job's Hydra ``overrides`` (what ``edmlab.sweep`` tabulates);
- ``samples.png`` (an image grid; a scatter or histogram for points), and ``images/<seed:06d>.png`` (``save=png``)
  or ``samples.npz`` (``save=npz``).

Image k uses seed ``seeds + k``: one random stream per image gives its latents, its class and its churn noise, in
that order (NVlabs/edm generate.py), so an image does not depend on the batch it was drawn in, nor on the process.

Under torchrun (WORLD_SIZE > 1, ``+launcher=torchrun``) each rank draws a contiguous share of the seeds
(``edmlab.distributed``); rank 0 gathers the samples (and labels) in seed order, computes the metrics and writes
every file, so the outputs are those of one process. FID needs no gathered images: the ranks all-reduce the sums
of the Inception features and of their centred outer products; KID and IS gather the features or logits.

Scores, by what the model was trained on:
- digits: the digits-classifier Fréchet distance, precision/recall and class balance, with the real-vs-real floor;
- a Gaussian mixture (``data=mixture``, or ``bench:<preset>``): sliced Wasserstein and MMD to the true
  distribution, and the discretization error against the exact probability-flow ODE,
  ``mixture_ode_error`` = √(mean_k ‖x_k − x*_k‖²), x*_k the exact endpoint from x(σ_0) = σ_0·z_k, where σ_0
  is the noise level the sampler starts from (deterministic samplers only: S_churn > 0 leaves no single ODE
  path);
- any image model with ``metrics.fid.ref``: Inception FID (``metrics.kid``, ``metrics.isc`` for KID and IS).
  EDM's protocol: 50,000 images, reference statistics of the whole data set, the minimum FID over the seed
  ranges 0–49999, 50000–99999, 100000–149999 (``metrics=fid50k``, i.e. ``metrics.fid.seed_ranges=3``).
"""
import contextlib
import hashlib
import inspect
import json
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .distributed import Ranks, env_ranks, init_process_group, mean_covariance, rank_device
from .export import build, load
from .generation import Drawn, draw
from .images import save_grid, to_uint8
from .mixture import GaussianMixture
from .sampling import sample, sigma_range, sigma_steps, time_steps
from .solvers import nfe

log = logging.getLogger(__name__)

BENCH = "bench:"
SAVE_MODES = ("grid", "png", "npz")
SCORED_DATASETS = ("DigitsDataset", "PointsDataset")
# rtol = atol of the exact ODE solve: its RMS distance to a 1e-11 solve is ~3e-10 on ring8, far below the error of
# any sampler measured here (≥ 1e-4), at a quarter of the cost.
ODE_REFERENCE_TOL = 1e-9

def bench_presets() -> dict:
    from .data.points import PRESETS

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


# ------------------------------------------------------------------------------------------------ what is evaluated


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


def training_dataset(config: dict | None):
    """The training data set, rebuilt when a data-set metric exists for it (digits, mixture points), else None."""
    spec = ((config or {}).get("data") or {}).get("dataset")
    if not isinstance(spec, dict) or str(spec.get("_target_", "")).rsplit(".", 1)[-1] not in SCORED_DATASETS:
        return None
    return build(spec)


def load_subject(ckpt: str, device: torch.device, class_label: int | None = None) -> Subject:
    if ckpt.startswith(BENCH):
        mixture = bench_mixture(ckpt[len(BENCH):])
        label_dim = mixture.num_components if class_label is not None else 0
        return Subject(mixture, (mixture.dim,), label_dim, torch.device("cpu"), ckpt, mixture=mixture)
    denoiser = load(ckpt, device)
    dataset = training_dataset(denoiser.training_config)
    kind = type(dataset).__name__ if dataset is not None else "network"
    return Subject(denoiser, tuple(denoiser.model_spec["shape"]), int(getattr(denoiser, "label_dim", 0)), device,
                   kind, dataset, getattr(dataset, "mixture", None))


# ------------------------------------------------------------------------------------------------ sampling




# ------------------------------------------------------------------------------------------------ metrics

_EXACT_CACHE: dict[str, torch.Tensor] = {}


def _digest(*tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def exact_endpoints(mixture: GaussianMixture, latents: torch.Tensor, sigma_start: float,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
    """x*_k: the exact probability-flow ODE solution from σ_start·z_k down to σ = 0, of the component of each
    sample's class when ``labels`` are given. Cached, so the jobs of a sweep solve each reference once."""
    key = _digest(mixture.means, mixture.stds, mixture.weights, latents,
                  labels if labels is not None else torch.empty(0), torch.tensor([sigma_start], dtype=torch.float64))
    if key not in _EXACT_CACHE:
        x = latents.to(torch.float64) * sigma_start
        if labels is None:
            exact = mixture.ode_solution(x, sigma_start, rtol=ODE_REFERENCE_TOL, atol=ODE_REFERENCE_TOL)
        else:
            exact = torch.empty_like(x)
            for k in labels.unique().tolist():
                rows = labels == k
                exact[rows] = component(mixture, k).ode_solution(x[rows], sigma_start, rtol=ODE_REFERENCE_TOL,
                                                                 atol=ODE_REFERENCE_TOL)
        if len(_EXACT_CACHE) >= 8:
            _EXACT_CACHE.pop(next(iter(_EXACT_CACHE)))
        _EXACT_CACHE[key] = exact
    return _EXACT_CACHE[key]


def ode_error(mixture: GaussianMixture, drawn: Drawn, sigma_start: float) -> float:
    """√(mean_k ‖x_k − x*_k‖²): the RMS distance between the samples and the exact ODE endpoints."""
    exact = exact_endpoints(mixture, drawn.latents, sigma_start, drawn.labels)
    return (drawn.samples.to(torch.float64) - exact).pow(2).sum(1).mean().sqrt().item()


def dataset_scorer(subject: Subject, class_label: int | None):
    """``samples → {name: value}`` with a ``floor`` for the subject's data, or None."""
    from .metrics.for_dataset import MixtureScore, dataset_metric

    if subject.mixture is not None:
        mixture = subject.mixture if class_label is None else component(subject.mixture, class_label)
        return MixtureScore(mixture)
    return dataset_metric(subject.dataset) if subject.dataset is not None else None


class InceptionScores:
    """FID (min over seed ranges), KID and IS of image samples, with torch-fidelity's Inception-v3."""

    def __init__(self, mcfg, device, ranks: Ranks = Ranks()):
        from .metrics.frechet import load_statistics

        fid = mcfg.fid
        self.weights_path, self.batch, self.method, self.device = fid.weights_path, int(fid.batch), fid.method, device
        self.ref = load_statistics(fid.ref) if fid.ref is not None else None
        self.kid, self.isc, self.ranks = bool(mcfg.kid), bool(mcfg.isc), ranks
        self.ref_features = None
        if self.active:
            from .metrics.inception import resolve_weights

            resolve_weights(self.weights_path)
        if self.kid and ranks.is_zero:
            from .metrics.inception import inception_features
            from .metrics.ref_stats import load_uint8_images

            if mcfg.ref_images is None:
                raise ValueError("metrics.kid=true compares with real images: set metrics.ref_images=digits, "
                                 "cifar10 (with metrics.ref_root) or a folder/ZIP of images")
            real = load_uint8_images(str(mcfg.ref_images), str(mcfg.ref_root), max_images=mcfg.max_ref_images)
            self.ref_features = inception_features(real, self.weights_path, self.batch, device)

    @property
    def active(self) -> bool:
        return self.ref is not None or self.kid or self.isc

    def __call__(self, images: torch.Tensor, first_range: bool) -> dict:
        """The scores of this rank's ``images`` together with the other ranks' (a collective): complete on rank 0,
        empty elsewhere."""
        from .metrics.frechet import frechet_distance
        from .metrics.inception import (fid_from_features, inception_outputs, inception_score_from_logits,
                                        kid_from_features)

        ranks = self.ranks
        out = inception_outputs(to_uint8(images), self.weights_path, self.batch, self.device)
        scores = {}
        if self.ref is not None and ranks.world == 1:
            scores["fid"] = fid_from_features(out["pool"], self.ref, self.method)
        elif self.ref is not None:
            mu, sigma = mean_covariance(out["pool"], ranks)
            if ranks.is_zero:
                scores["fid"] = frechet_distance(mu, sigma, *self.ref, method=self.method)
        pool = ranks.gather_rows(out["pool"]) if first_range and self.kid else None
        logits = ranks.gather_rows(out["logits"]) if first_range and self.isc else None
        if pool is not None:
            scores["kid_mean"], scores["kid_std"] = kid_from_features(pool, self.ref_features)
        if logits is not None:
            scores["is_mean"], scores["is_std"] = inception_score_from_logits(logits)
        return scores


# ------------------------------------------------------------------------------------------------ config


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _need(ok: bool, message: str):
    if not ok:
        raise ValueError(message)


def check_config(cfg: DictConfig) -> None:
    _need(not OmegaConf.is_missing(cfg, "ckpt") and cfg.ckpt not in (None, ""),
          "ckpt is required: ckpt=<run dir | network.pt | checkpoints/last.ckpt> of src/train.py, or "
          f"ckpt=bench:<preset> for the exact Gaussian-mixture denoiser ({', '.join(sorted(bench_presets()))})")
    _need(_is_int(cfg.num_samples) and cfg.num_samples >= 1, f"num_samples={cfg.num_samples!r} must be an integer >= 1")
    _need(_is_int(cfg.seeds) and cfg.seeds >= 0,
          f"seeds={cfg.seeds!r} must be an integer >= 0 (image k uses seed seeds+k)")
    _need(_is_int(cfg.batch) and cfg.batch >= 1, f"batch={cfg.batch!r} must be an integer >= 1")
    _need(cfg.class_label is None or (_is_int(cfg.class_label) and cfg.class_label >= 0),
          f"class_label={cfg.class_label!r} must be null (a random class per seed) or a class index >= 0")
    _need(cfg.save in SAVE_MODES, f"save={cfg.save!r}: choose one of {', '.join(SAVE_MODES)}")
    _need(_is_int(cfg.grid_images) and cfg.grid_images >= 0, f"grid_images={cfg.grid_images!r} must be an integer >= 0")
    ranges = cfg.metrics.fid.seed_ranges
    _need(_is_int(ranges) and ranges >= 1, f"metrics.fid.seed_ranges={ranges!r} must be an integer >= 1 (EDM: 3)")
    allowed = set(inspect.signature(sample).parameters) - {"denoiser", "latents", "generator", "callback",
                                                             "class_labels"}
    unknown = sorted(set(cfg.sampler) - allowed)
    _need(not unknown, f"sampler.{unknown[0] if unknown else ''} is not an argument of edmlab.sample; "
                       f"choose from {sorted(allowed)}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:<index>") from None
    _need(device.type != "cuda" or torch.cuda.is_available(),
          f"device={name} but CUDA is not available here; use device=auto or device=cpu")
    return device


def grid_kwargs(sampler_kwargs: dict, denoiser) -> dict:
    """The arguments of ``time_steps`` among the sampler's."""
    names = set(inspect.signature(time_steps).parameters) - {"num_steps", "denoiser"}
    return {k: v for k, v in sampler_kwargs.items() if k in names} | {"denoiser": denoiser}


def job_info() -> dict:
    """The Hydra overrides and job number of the running job (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    info = {"overrides": list(hydra_cfg.overrides.task)}
    num = OmegaConf.select(hydra_cfg, "job.num", default=None)
    if num is not None:
        info["job_num"] = int(num)
    return info


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def config_summary(cfg: DictConfig, **resolved) -> dict:
    """The settings of a job as given, updated with ``resolved`` values (the σ range actually used, ...)."""
    s = cfg.sampler
    summary = {"ckpt": str(cfg.ckpt) if not OmegaConf.is_missing(cfg, "ckpt") else None}
    for key in ("solver", "discretization", "schedule", "scaling", "num_steps", "rho", "sigma_min", "sigma_max",
                "alpha", "S_churn", "S_min", "S_max", "S_noise"):
        summary[key] = s.get(key)
    summary.update(seeds=f"{cfg.seeds}-{cfg.seeds + cfg.num_samples * cfg.metrics.fid.seed_ranges - 1}"
                   if _is_int(cfg.seeds) and _is_int(cfg.num_samples) and _is_int(cfg.metrics.fid.seed_ranges)
                   else cfg.seeds,
                   batch=cfg.batch, class_label=cfg.class_label)
    return {**summary, **resolved}


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(_jsonable(record), indent=2, allow_nan=False) + "\n")


# ------------------------------------------------------------------------------------------------ outputs


def _save_histogram(values: torch.Tensor, path: Path, mixture: GaussianMixture | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.hist(values.numpy(), bins=80, density=True, color="tab:blue", alpha=0.7, label="samples")
    if mixture is not None:
        lo, hi = float(values.min()), float(values.max())
        grid = torch.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 400, dtype=torch.float64)
        ax.plot(grid.numpy(), mixture.log_prob(grid[:, None]).exp().numpy(), color="k", lw=1, label="p(x)")
    ax.legend()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def save_outputs(out: Path, subject: Subject, drawn: Drawn, save: str, grid_images: int) -> Path | None:
    """samples.png (the first ``grid_images`` images; all points as a scatter or a histogram; none when
    ``grid_images`` is 0) and the images or the npz of ``save``; returns the samples.png path."""
    samples, grid = drawn.samples, None
    if not grid_images:
        pass
    elif subject.is_image:
        grid = save_grid(samples[:grid_images], out / "samples.png", scale=max(1, 32 // samples.shape[-1]))
    elif samples.ndim == 2 and samples.shape[1] == 2:
        from .viz.points import save_scatter

        reference = subject.mixture.sample(len(samples), torch.Generator().manual_seed(0)) if subject.mixture else None
        grid = save_scatter(samples, out / "samples.png", reference=reference, title=subject.kind)
    elif samples.ndim == 2 and samples.shape[1] == 1:
        grid = _save_histogram(samples[:, 0], out / "samples.png", subject.mixture)
    if save == "png":
        from PIL import Image

        folder = out / "images"
        folder.mkdir(parents=True, exist_ok=True)
        pictures = to_uint8(samples).permute(0, 2, 3, 1).numpy()
        for seed, picture in zip(drawn.seeds, pictures):
            Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(folder / f"{seed:06d}.png")
    elif save == "npz":
        arrays = {"seeds": np.asarray(drawn.seeds, dtype=np.int64)}
        if subject.is_image:
            arrays["images"] = to_uint8(samples).permute(0, 2, 3, 1).numpy()  # [N, H, W, C], as PNGs hold them
        else:
            arrays["samples"] = samples.numpy()
        if drawn.labels is not None:
            arrays["labels"] = drawn.labels.numpy()
        np.savez(out / "samples.npz", **arrays)
    return grid


def log_to_wandb(cfg: DictConfig, out: Path, record: dict, grid: Path | None) -> None:
    """Metrics and the grid into an offline W&B run in the job directory (``logger=none`` skips it)."""
    spec = (cfg.get("logger") or {}).get("wandb")
    if not spec:
        return
    try:
        import wandb

        run = wandb.init(mode="offline" if spec.get("offline", True) else "online", dir=str(out),
                         project=spec.get("project", "edmlab"), group=spec.get("group"), name=spec.get("name"),
                         job_type=str(cfg.task_name), config=_jsonable(record.get("config", {})))
        try:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            run.log({**scalars, **({"samples": wandb.Image(str(grid))} if grid is not None else {})})
            run.summary.update(scalars)
        finally:
            run.finish()
    except Exception as e:  # noqa: BLE001 - the metrics are on disk already; a logger failure must not fail the job
        warnings.warn(f"W&B logging failed ({type(e).__name__}: {e}); metrics.json is complete", RuntimeWarning)


# ------------------------------------------------------------------------------------------------ the job


@contextlib.contextmanager
def one_thread(enabled: bool = True):
    """Point clouds are thousands of tiny tensor operations (the exact ODE solve calls the score ~1000 times):
    on one CPU thread they run tens of times faster than with intra-op threading, which only adds overhead."""
    threads = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run(cfg: DictConfig, out: Path, device: torch.device, ranks: Ranks = Ranks()) -> tuple[dict | None, Path | None]:
    """Sample, score and save; return the metrics.json record and the samples.png path (rank 0; None, None on
    the other ranks)."""
    check_config(cfg)
    _need(cfg.num_samples >= ranks.world, f"num_samples={cfg.num_samples} is fewer than the {ranks.world} processes: "
                                          f"ask for at least one sample per process")
    sampler_kwargs = OmegaConf.to_container(cfg.sampler, resolve=True)
    subject = load_subject(str(cfg.ckpt), device, cfg.class_label)
    if cfg.class_label is not None:
        _need(subject.label_dim > 0, f"class_label={cfg.class_label} but {cfg.ckpt} is unconditional (label_dim 0); "
                                     f"use class_label=null")
        _need(cfg.class_label < subject.label_dim,
              f"class_label={cfg.class_label} is out of range: the model has {subject.label_dim} classes (0-"
              f"{subject.label_dim - 1})")
    _need(cfg.save != "png" or subject.is_image,
          f"save=png writes images, but {cfg.ckpt} makes points of shape {list(subject.shape)}; use save=npz")
    _need(subject.is_image or not (cfg.metrics.fid.ref is not None or cfg.metrics.kid or cfg.metrics.isc),
          f"FID/KID/IS score images, but {cfg.ckpt} makes points; drop metrics.fid.ref/kid/isc")
    lo, hi = sigma_range(sampler_kwargs["discretization"], sampler_kwargs.get("sigma_min"),
                         sampler_kwargs.get("sigma_max"), subject.denoiser)
    sigma_start = float(sigma_steps(sampler_kwargs["num_steps"], **grid_kwargs(sampler_kwargs, subject.denoiser))[0])
    with one_thread(not subject.is_image):
        record, drawn = measure(cfg, subject, sampler_kwargs, sigma_start, ranks)
    if not ranks.is_zero:
        return None, None
    grid = save_outputs(out, subject, drawn, str(cfg.save), int(cfg.grid_images))
    record["config"] = config_summary(cfg, sigma_min=lo, sigma_max=hi, sigma_start=sigma_start,
                                      device=str(subject.device), model=subject.kind, label_dim=subject.label_dim,
                                      processes=ranks.world)
    return record, grid


def gather_drawn(drawn: Drawn, ranks: Ranks, latents: bool) -> Drawn | None:
    """Rank 0: the samples of all ranks in seed order (with the latents when ``latents``); None elsewhere."""
    if ranks.world == 1:
        return drawn
    gathered = [ranks.gather_rows(x) if x is not None else None
                for x in (drawn.samples, drawn.latents if latents else None, drawn.labels,
                          torch.as_tensor(drawn.seeds, dtype=torch.int64))]
    if not ranks.is_zero:
        return None
    samples, z, labels, seeds = gathered
    return Drawn(samples, z, labels, seeds.tolist())


def measure(cfg: DictConfig, subject: Subject, sampler_kwargs: dict, sigma_start: float,
            ranks: Ranks = Ranks()) -> tuple[dict | None, Drawn | None]:
    """Draw the samples of every seed range, this rank's share of each, and score them: (record without config,
    samples of the first range) on rank 0, (None, None) on the others."""
    mcfg = cfg.metrics
    inception = InceptionScores(mcfg, subject.device, ranks) if subject.is_image else None
    n, ranges = int(cfg.num_samples), int(mcfg.fid.seed_ranges)
    clock = {"sample_sec": 0.0, "metric_sec": 0.0}

    @contextlib.contextmanager
    def timed(key):
        tic = time.perf_counter()
        yield
        clock[key] += time.perf_counter() - tic

    def draw_range(r: int) -> Drawn:
        with timed("sample_sec"):
            seeds = ranks.share(range(cfg.seeds + r * n, cfg.seeds + (r + 1) * n))
            drawn = draw(subject.denoiser, subject.shape, seeds, int(cfg.batch), sampler_kwargs, subject.device,
                         subject.label_dim, cfg.class_label)
        if not ranks.all(bool(torch.isfinite(drawn.samples).all())):
            raise ValueError(f"the sampler produced NaN/inf samples ({sampler_kwargs['solver']}, num_steps="
                             f"{sampler_kwargs['num_steps']}, rho={sampler_kwargs['rho']}): try more steps, or check "
                             f"the checkpoint")
        return drawn

    ode = subject.mixture is not None and mcfg.ode_error
    mine = draw_range(0)
    drawn = gather_drawn(mine, ranks, latents=ode)
    scores, extra = {}, {}
    with timed("metric_sec"):
        if ranks.is_zero:
            if ode and sampler_kwargs.get("S_churn", 0) > 0:
                extra["notes"] = ["mixture_ode_error skipped: S_churn > 0 makes the sampler stochastic"]
            elif ode:
                scores["mixture_ode_error"] = ode_error(subject.mixture, drawn, sigma_start)
            scorer = dataset_scorer(subject, cfg.class_label) if mcfg.dataset else None
            if scorer is not None:
                scores.update(scorer(drawn.samples))
                extra["floor"] = scorer.floor
        if inception is not None and inception.active:
            scores.update(inception(mine.samples, first_range=True))
    if inception is not None and inception.ref is not None and ranges > 1:
        per_range = [scores.get("fid")]
        for r in range(1, ranges):
            samples = draw_range(r).samples
            with timed("metric_sec"):
                per_range.append(inception(samples, first_range=False).get("fid"))
        if ranks.is_zero:
            scores["fid"], scores["fid_per_range"] = min(per_range), per_range
    clock["sample_sec"] = ranks.max(clock["sample_sec"])  # the ranks sample at the same time: the slowest one's
    if not ranks.is_zero:
        return None, None
    record = {"status": "ok", **scores, "nfe": nfe(sampler_kwargs["solver"], sampler_kwargs["num_steps"]),
              "num_samples": n, **clock, **extra}
    return record, drawn


def check_same_run_dir(out: Path, ranks: Ranks) -> None:
    """Every rank composed its own config; refuse to run when their job dirs differ (a clock-stamped dir)."""
    dirs = ranks.all_values(str(out))
    other = next((d for d in dirs if d != dirs[0]), None)
    _need(other is None,
          f"the {ranks.world} processes got different run dirs ({dirs[0]} on rank 0, {other} on another) because "
          f"hydra.run.dir depends on each one's clock: add +launcher=torchrun (the dir then comes from EDMLAB_RUN_DIR "
          f"or the torchrun run id, docs/scaling.md) or pin hydra.run.dir=<dir>")


def evaluate(cfg: DictConfig, catch_errors: bool | None = None) -> dict:
    """The job body of ``src/eval.py``: writes ``<paths.output_dir>/metrics.json`` and returns its record.

    A failing job records ``status: failed`` and its ``error`` there too. In a multirun (or with
    ``catch_errors=True``) it then returns that record instead of raising, so the sweep goes on and its
    report lists the failure; otherwise the error propagates (``src/eval.py`` turns it into exit code 2).
    Under torchrun every rank calls it; rank 0 alone writes files and returns the record, the others return {}
    (or the failed record: all ranks fail together).
    """
    out = Path(cfg.paths.output_dir)
    ranks = env_ranks()
    if ranks.is_zero:
        out.mkdir(parents=True, exist_ok=True)
    catch = in_multirun() if catch_errors is None else catch_errors
    try:
        device = rank_device(resolve_device(str(cfg.device)), ranks)
        init_process_group(ranks, device)
        check_same_run_dir(out, ranks)
        record, grid = run(cfg, out, device, ranks)
    except Exception as e:
        message = str(e) if isinstance(e, (ValueError, FileNotFoundError)) else f"{type(e).__name__}: {e}"
        record = {"status": "failed", "error": message, "config": config_summary(cfg), **job_info()}
        if not ranks.is_zero:
            if not catch:
                raise
            return record
        write_json(out / "metrics.json", record)
        if not catch:
            raise
        log.exception("evaluation failed")
        where = " ".join(record.get("overrides", []))
        print(f"error: job {record.get('job_num', '')} ({where}) failed: {message}", file=sys.stderr)
        return record
    if not ranks.is_zero:
        return {}
    record.update(job_info())
    write_json(out / "metrics.json", record)
    log_to_wandb(cfg, out, record, grid)
    shown = {k: v for k, v in record.items() if isinstance(v, float) and not k.endswith("_sec")}
    log.info("metrics: %s", shown)
    print(f"{out / 'metrics.json'}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    return record
