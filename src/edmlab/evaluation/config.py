"""The settings of an evaluation job (conf/eval.yaml): checked before anything runs, resolved (device, σ grid)
and summarised for metrics.json."""
import torch
from omegaconf import DictConfig, OmegaConf

from edmlab.design.guidance import check_guidance
from edmlab.sampling.likelihood import DIVERGENCES, PROBES
from edmlab.sampling.planning import sampler_keys
from edmlab.evaluation.subject import bench_presets
from edmlab.infra.checks import is_int

SAVE_MODES = ("grid", "png", "npz")
SAMPLE_GUIDANCE = {"guide", "guidance", "guidance_interval", "guidance_interval_by"}  # of edmlab.sample itself


def need(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def check_config(cfg: DictConfig) -> None:
    need(not OmegaConf.is_missing(cfg, "ckpt") and cfg.ckpt not in (None, ""),
         "ckpt is required: ckpt=<run dir | network.pt | checkpoints/last.ckpt> of src/train.py, or "
         f"ckpt=bench:<preset> for the exact Gaussian-mixture denoiser ({', '.join(sorted(bench_presets()))})")
    need(is_int(cfg.num_samples) and cfg.num_samples >= 1, f"num_samples={cfg.num_samples!r} must be an integer >= 1")
    need(cfg.get("threads") is None or (is_int(cfg.threads) and cfg.threads >= 1),
         f"threads={cfg.get('threads')!r} must be an integer >= 1, or null (this job's share of the cores)")
    need(is_int(cfg.seeds) and cfg.seeds >= 0,
         f"seeds={cfg.seeds!r} must be an integer >= 0 (image k uses seed seeds+k)")
    need(is_int(cfg.batch) and cfg.batch >= 1, f"batch={cfg.batch!r} must be an integer >= 1")
    need(cfg.class_label is None or (is_int(cfg.class_label) and cfg.class_label >= 0),
         f"class_label={cfg.class_label!r} must be null (a random class per seed) or a class index >= 0")
    need(cfg.save in SAVE_MODES, f"save={cfg.save!r}: choose one of {', '.join(SAVE_MODES)}")
    need(is_int(cfg.grid_images) and cfg.grid_images >= 0, f"grid_images={cfg.grid_images!r} must be an integer >= 0")
    ranges = cfg.metrics.fid.seed_ranges
    need(is_int(ranges) and ranges >= 1, f"metrics.fid.seed_ranges={ranges!r} must be an integer >= 1 (EDM: 3)")
    dino = cfg.metrics.get("fd_dinov2") or {}
    need(isinstance(dino.get("enabled", False), bool),
         f"metrics.fd_dinov2.enabled={dino.get('enabled')!r} must be true or false")
    need(is_int(dino.get("batch", 64)) and dino.get("batch", 64) >= 1,
         f"metrics.fd_dinov2.batch={dino.get('batch')!r} must be an integer >= 1")
    need(dino.get("method", "sqrtm") in ("sqrtm", "eigh"),
         f"metrics.fd_dinov2.method={dino.get('method')!r}: choose sqrtm (NVlabs/edm2) or eigh")
    check_nll(cfg.metrics.get("nll") or {})
    if cfg.guide is not None:
        check_guidance(cfg.guidance, cfg.guidance_interval, cfg.guidance_interval_by)
    allowed = sampler_keys() | SAMPLE_GUIDANCE
    unknown = sorted(set(cfg.sampler) - allowed)
    need(not unknown, f"sampler.{unknown[0] if unknown else ''} is not an argument of edmlab.sample; "
                      f"choose from {sorted(allowed)}")


def check_nll(nll) -> None:
    """``metrics.nll``: the held-out log-likelihood's options (``edmlab.sampling.likelihood``)."""
    need(isinstance(nll.get("enabled", False), bool),
         f"metrics.nll.enabled={nll.get('enabled')!r} must be true or false")
    for key in ("num_samples", "probes"):
        value = nll.get(key, 1)
        need(is_int(value) and value >= 1, f"metrics.nll.{key}={value!r} must be an integer >= 1")
    for key, choices in (("divergence", DIVERGENCES), ("probe", PROBES)):
        value = nll.get(key, choices[0])
        need(value in choices, f"metrics.nll.{key}={value!r}: choose one of {', '.join(choices)}")
    for key in ("rtol", "atol"):
        value = nll.get(key, 1e-5)
        need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf"),
             f"metrics.nll.{key}={value!r} must be a number > 0")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:<index>") from None
    need(device.type != "cuda" or torch.cuda.is_available(),
         f"device={name} but CUDA is not available here; use device=auto or device=cpu")
    return device


def config_summary(cfg: DictConfig, **resolved) -> dict:
    """The settings of a job as given (every sampler setting, whatever it is), updated with ``resolved`` values
    (the σ range actually used, ...)."""
    summary = {"ckpt": str(cfg.ckpt) if not OmegaConf.is_missing(cfg, "ckpt") else None}
    summary.update(OmegaConf.to_container(cfg.sampler, resolve=False))
    summary.update(seeds=f"{cfg.seeds}-{cfg.seeds + cfg.num_samples * cfg.metrics.fid.seed_ranges - 1}"
                   if is_int(cfg.seeds) and is_int(cfg.num_samples) and is_int(cfg.metrics.fid.seed_ranges)
                   else cfg.seeds,
                   batch=cfg.batch, class_label=cfg.class_label)
    return {**summary, **resolved}
