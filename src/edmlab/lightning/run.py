"""Compose → instantiate → fit: the body of ``src/train.py``, importable for tests and notebooks."""
import json
import math
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from ..data import AUGMENT_DIM


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and the fix."""


def _need(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def check_train_config(cfg: DictConfig) -> None:
    _need(isinstance(cfg.batch_size, int) and cfg.batch_size >= 1,
          f"batch_size={cfg.batch_size!r} must be a positive integer (images per optimizer step)")
    _need(cfg.batch_gpu is None or (isinstance(cfg.batch_gpu, int) and cfg.batch_gpu >= 1),
          f"batch_gpu={cfg.batch_gpu!r} must be null or a positive integer")
    _need(cfg.duration_kimg > 0, f"duration_kimg={cfg.duration_kimg} must be > 0")
    _need(cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr} must be > 0")
    _need(cfg.optim.lr_rampup_kimg >= 0, f"optim.lr_rampup_kimg={cfg.optim.lr_rampup_kimg} must be >= 0")
    _need(cfg.ema.halflife_kimg >= 0, f"ema.halflife_kimg={cfg.ema.halflife_kimg} must be >= 0")
    _need(cfg.sigma_data > 0, f"sigma_data={cfg.sigma_data} must be > 0")


def world_size(trainer_cfg) -> int:
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1)
    if isinstance(devices, int) and devices > 0:
        return devices * nodes
    if isinstance(devices, (list, tuple)):
        return len(devices) * nodes
    return (torch.cuda.device_count() or 1) * nodes if str(trainer_cfg.get("accelerator")) in ("gpu", "cuda", "auto") \
        else nodes


def batch_split(batch_size: int, batch_gpu: int | None, world: int) -> tuple[int, int]:
    """(per-device micro-batch, accumulation rounds) with batch = world × rounds × micro (EDM batch / batch_gpu)."""
    _need(batch_size % world == 0, f"batch_size={batch_size} is not divisible by the {world} devices")
    per_device = batch_size // world
    micro = min(batch_gpu or per_device, per_device)
    _need(per_device % micro == 0, f"batch_gpu={batch_gpu} must divide the per-device batch {per_device}")
    return micro, per_device // micro


def model_spec(cfg: DictConfig, datamodule) -> dict:
    kwargs = dict(datamodule.network_kwargs)
    kwargs["label_dim"] = datamodule.label_dim
    kwargs["augment_dim"] = AUGMENT_DIM if cfg.get("augment") else 0
    return {"network": OmegaConf.to_container(cfg.network, resolve=True),
            "network_kwargs": kwargs,
            "preconditioning": OmegaConf.to_container(cfg.preconditioning, resolve=True),
            "shape": list(datamodule.shape)}


def build(cfg: DictConfig):
    """(trainer, module, datamodule) of a training config; raises ConfigError/ValueError before writing anything."""
    from .datamodule import EDMDataModule  # noqa: F401  (import errors surface here, not inside instantiate)
    from .module import EDMModule

    check_train_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    micro, rounds = batch_split(cfg.batch_size, cfg.batch_gpu, world_size(cfg.trainer))
    datamodule = hydra.utils.instantiate(cfg.data, batch_size=micro)
    spec = model_spec(cfg, datamodule)
    container = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                 for k, v in cfg.items_ex(resolve=True) if k != "hydra"}
    module = EDMModule(model=spec,
                       noise_distribution=container["noise_distribution"],
                       loss_weighting=container["loss_weighting"],
                       augment=container.get("augment"),
                       optim=container["optim"], ema=container["ema"], sampler=container["sampler"],
                       batch_size=cfg.batch_size, seed=cfg.seed, config=container)
    max_steps = cfg.trainer.max_steps
    if max_steps is None or max_steps < 0:
        max_steps = math.ceil(cfg.duration_kimg * 1000 / cfg.batch_size)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = hydra.utils.instantiate(cfg.trainer, max_steps=max_steps, accumulate_grad_batches=rounds,
                                      callbacks=callbacks, logger=loggers or False)
    return trainer, module, datamodule


def train(cfg: DictConfig) -> dict:
    """Train, and return the final metrics (also in <run dir>/metrics.json)."""
    trainer, module, datamodule = build(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if trainer.global_rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics_file = output_dir / "metrics.json"
    return json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
