"""Compose → instantiate → fit: the body of ``src/train.py``, importable for tests and notebooks."""
import json
import math
import os
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
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
    _need(cfg.ema.get("halflife_kimg", 0) >= 0, f"ema.halflife_kimg={cfg.ema.get('halflife_kimg')} must be >= 0")
    _need(cfg.sigma_data > 0, f"sigma_data={cfg.sigma_data} must be > 0")
    for key in ("compile", "channels_last"):
        _need(isinstance(cfg.get(key, False), bool), f"{key}={cfg.get(key)!r} must be true or false")


class _ZeroDenoiser:
    """D(x; σ) = 0 with the network's attributes that the samplers read (σ range, σ rounding, σ_data)."""

    def __init__(self, net):
        for name in ("sigma_min", "sigma_max", "sigma_data", "round_sigma"):
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    def __call__(self, x, sigma, **kwargs):
        return torch.zeros_like(x)


def check_sampler(net, sampler: dict) -> None:
    """Dry run of ``edmlab.sample`` with the run's sampler settings on a zero denoiser of the network's σ range and a
    1-element latent: a bad sampler value (``sampler.rho=-1``, an unknown solver) fails before training, not in the
    sample grids and the final report at the end of the run. New solvers and discretizations are checked alike."""
    from ..sampling import sample

    try:
        sample(_ZeroDenoiser(net), torch.zeros(1, 1, dtype=torch.float64), **sampler,
               generator=torch.Generator().manual_seed(0))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"sampler: {e} (the sample grids and the final report draw with these settings; fix "
                          f"sampler.* or the solver/discretization/schedule/scaling option)") from e


def world_size(trainer: L.Trainer) -> int:
    """Processes of the run as Lightning resolved them (devices=-1/"auto" included): devices per node × nodes.
    For processes created outside (torchrun, SLURM) Lightning checks this product against the launcher at fit."""
    return trainer.num_devices * trainer.num_nodes


def is_global_zero(trainer: L.Trainer) -> bool:
    """Rank 0 of the whole run, known before ``fit``: the strategy's rank (torchrun, SLURM, ddp_spawn's parent),
    and the rank in the environment for the children of Lightning's own script launcher (LOCAL_RANK, NODE_RANK)."""
    return trainer.global_rank == 0 and rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def check_run_dir() -> None:
    """Under torchrun every rank composes its own config, so a run dir stamped by each rank's clock would split one
    run over several dirs: refuse it, naming the fix (a dir that all ranks compute alike)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) <= 1 \
            or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    key = "run" if hydra_cfg.mode in (None, RunMode.RUN) else "sweep"
    pattern = str(OmegaConf.to_container(hydra_cfg[key], resolve=False)["dir"])
    _need("${now:" not in pattern or "TORCHELASTIC_RUN_ID" in pattern or "EDMLAB_RUN_DIR" in pattern,
          f"hydra.{key}.dir={pattern!r} depends on the clock, so the {os.environ['WORLD_SIZE']} torchrun ranks would "
          f"each get their own dir: add +launcher=torchrun (the dir then comes from EDMLAB_RUN_DIR or the torchrun "
          f"run id, see docs/scaling.md) or pin hydra.{key}.dir=<dir>")


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


def instantiate(node, **kwargs):
    """``hydra.utils.instantiate`` that raises the target's own error (the ValueError or FileNotFoundError that names
    the value and the fix) rather than Hydra's wrapper around it."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, FileNotFoundError)):
            raise e.__cause__ from None
        raise


def instantiate_all(cfg: DictConfig, group: str) -> list:
    """The objects of a group of named ``_target_`` nodes (callbacks, logger)."""
    nodes = cfg.get(group) or {}
    for name, node in nodes.items():
        _need(node is None or "_target_" in node,
              f"{group}.{name} has no _target_ (keys {sorted(node or {})}): the {group} option chosen does not define "
              f"{name}, yet something (an experiment preset?) sets {group}.{name}.*; pick a {group} option that has "
              f"it, or remove those keys")
    return [instantiate(node) for node in nodes.values() if node is not None]


def build(cfg: DictConfig):
    """(trainer, module, datamodule) of a training config; raises ConfigError/ValueError before writing anything.

    The Trainer comes first so that the batch split uses the number of processes Lightning resolved
    (devices=-1/"auto"); its ``accumulate_grad_batches`` is a plain attribute read by the loop, set here."""
    from .datamodule import EDMDataModule  # noqa: F401  (import errors surface here, not inside instantiate)
    from .module import EDMModule

    check_train_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    max_steps = cfg.trainer.max_steps
    if max_steps is None or max_steps < 0:
        max_steps = math.ceil(cfg.duration_kimg * 1000 / cfg.batch_size)
    callbacks, loggers = instantiate_all(cfg, "callbacks"), instantiate_all(cfg, "logger")
    trainer = hydra.utils.instantiate(cfg.trainer, max_steps=max_steps, callbacks=callbacks, logger=loggers or False)
    micro, rounds = batch_split(cfg.batch_size, cfg.batch_gpu, world_size(trainer))
    trainer.accumulate_grad_batches = rounds
    datamodule = instantiate(cfg.data, batch_size=micro)
    spec = model_spec(cfg, datamodule)
    container = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                 for k, v in cfg.items_ex(resolve=True) if k != "hydra"}
    module = EDMModule(model=spec,
                       noise_distribution=container["noise_distribution"],
                       loss_weighting=container["loss_weighting"],
                       augment=container.get("augment"),
                       optim=container["optim"], ema=container["ema"], sampler=container["sampler"],
                       lr_schedule=container.get("lr_schedule"),
                       batch_size=cfg.batch_size, seed=cfg.seed, config=container,
                       compile=bool(cfg.get("compile", False)), channels_last=bool(cfg.get("channels_last", False)))
    if cfg.get("init_from"):
        from ..export import init_from  # fine-tuning: the weights of a network.pt, run dir or NVlabs .pkl

        init_from(cfg.init_from, spec, module.net, module.ema)
    check_sampler(module.net, container["sampler"])
    return trainer, module, datamodule


def train(cfg: DictConfig) -> dict:
    """Train, and return the final metrics (also in <run dir>/metrics.json; rank 0 only, {} on the other ranks)."""
    check_run_dir()
    trainer, module, datamodule = build(cfg)
    output_dir = Path(cfg.paths.output_dir)
    zero = is_global_zero(trainer)
    if zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics_file = output_dir / "metrics.json"
    return json.loads(metrics_file.read_text()) if zero and metrics_file.is_file() else {}
