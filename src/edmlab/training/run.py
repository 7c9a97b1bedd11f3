"""Compose → instantiate → fit: the body of ``src/train.py``, importable for tests and notebooks."""
import json
import math
import os
import secrets
import shlex
import signal
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from edmlab.codec import build_codec, codec_class
from edmlab.design.augment import AUGMENT_DIM
from edmlab.infra.files import atomic_write_text
from edmlab.infra.jobs import share_the_machine
from edmlab.training.callbacks import FinalReport
from edmlab.training.checkpoint_io import SafeCheckpointIO, read_checkpoint
from edmlab.training.datamodule import network_kwargs
from edmlab.training.guard import Interrupted, RunGuard, guarded_first
from edmlab.training.run_dir import check_run_dir_free, checkpoint_file, claim, release, stored_run_id, summary


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and the fix."""


def _need(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def _number(key: str, value, *, integer=False, low=None, high=None, low_open=False, allow_none=False):
    """``value`` of config ``key`` is a number (an integer if ``integer``) in the given range, else a ConfigError."""
    if value is None and allow_none:
        return
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and (integer or math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high
    if not ok:
        bound = "" if low is None else f" {'>' if low_open else '>='} {low}"
        bound += "" if high is None else f"{' and' if bound else ''} < {high}"
        raise ConfigError(f"{key}={value!r} must be {kind}{bound}{' or null' if allow_none else ''}")


def _typed_like_defaults(group: str, node) -> None:
    """Each key of a ``_target_`` node whose default (in the target's signature) is a number must be a number:
    ``noise_distribution.P_mean=abc`` is refused here, naming the key, not as a TypeError deep in the first step."""
    import inspect

    if not OmegaConf.is_config(node) or "_target_" not in node:
        return
    try:
        params = inspect.signature(hydra.utils.get_class(node._target_)).parameters
    except Exception:  # noqa: BLE001 - an unknown target is reported by instantiate with its own message
        return
    for key, value in node.items():
        default = params[key].default if key in params else None
        if isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
            _number(f"{group}.{key}", value)


def check_train_config(cfg: DictConfig) -> None:
    """Every value the run will use, types included, before anything is built or written."""
    missing = sorted(OmegaConf.missing_keys(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])))
    missing += [str(key) for key in cfg.get("required") or () if OmegaConf.select(cfg, str(key)) is None]
    _need(not missing, f"{', '.join(f'{key}=null' for key in missing)}: this config needs "
                       f"{' '.join(f'{key}=...' for key in missing)} (e.g. experiment=digits_ect tunes a trained run: "
                       f"init_from=<run dir | network.pt | NVlabs .pkl>)")
    _number("batch_size", cfg.batch_size, integer=True, low=1)
    _number("batch_gpu", cfg.batch_gpu, integer=True, low=1, allow_none=True)
    _number("seed", cfg.seed, integer=True, low=0)
    _number("duration_kimg", cfg.duration_kimg, low=0, low_open=True)
    _number("sigma_data", cfg.sigma_data, low=0, low_open=True)
    _number("optim.lr", cfg.optim.lr, low=0, low_open=True)
    _number("optim.lr_rampup_kimg", cfg.optim.get("lr_rampup_kimg", 0), low=0)
    _number("optim.eps", cfg.optim.get("eps", 1e-8), low=0, low_open=True)
    betas = cfg.optim.get("betas", [0.9, 0.999])
    _need(OmegaConf.is_list(betas) and len(betas) == 2, f"optim.betas={betas!r} must be a list [beta1, beta2]")
    for i, beta in enumerate(betas):
        _number(f"optim.betas[{i}]", beta, low=0, high=1)
    ema = cfg.ema
    _number("ema.halflife_kimg", ema.get("halflife_kimg", 0), low=0)
    _number("ema.rampup_ratio", ema.get("rampup_ratio"), low=0, allow_none=True)
    if ema.get("stds") is not None:
        for i, std in enumerate(ema.stds):
            _number(f"ema.stds[{i}]", std, low=0, low_open=True)
    if ema.get("snapshot_kimg") is not None:
        _number("ema.snapshot_kimg", ema.snapshot_kimg, low=0, low_open=True)
    _number("trainer.max_steps", cfg.trainer.get("max_steps"), integer=True, low=-1, allow_none=True)
    _number("threads", cfg.get("threads"), integer=True, low=1, allow_none=True)
    for key in ("compile", "channels_last"):
        _need(isinstance(cfg.get(key, False), bool), f"{key}={cfg.get(key)!r} must be true or false")
    for group in ("network", "preconditioning", "noise_distribution", "loss_weighting", "augment", "data", "ema",
                  "lr_schedule"):
        _typed_like_defaults(group, cfg.get(group))
    check_tags(cfg.get("tags"))


WANDB_TAG_LENGTH = 64  # the longest tag W&B keeps


def check_tags(tags) -> None:
    """``tags`` is a list of names (numbers allowed, they become names), each 1 to 64 characters long."""
    if tags is None:
        return
    _need(OmegaConf.is_list(tags) or isinstance(tags, (list, tuple)),
          f"tags={tags!r} must be a list of names: tags=[{tags}] or tags=[a,b]")
    for i, tag in enumerate(tags):
        _need(isinstance(tag, (str, int, float)) and not isinstance(tag, bool)
              and 0 < len(str(tag)) <= WANDB_TAG_LENGTH,
              f"tags[{i}]={tag!r} must be a name of 1 to {WANDB_TAG_LENGTH} characters")


class _ZeroDenoiser:
    """D(x; σ) = 0 with the network's attributes that the samplers read (σ range, σ rounding, σ_data)."""

    def __init__(self, net):
        for name in ("sigma_min", "sigma_max", "sigma_data", "round_sigma", "boundary_sigma"):
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    def __call__(self, x, sigma, **kwargs):
        return torch.zeros_like(x)


def check_sampler(net, sampler: dict) -> None:
    """Dry run of ``edmlab.sample`` with the run's sampler settings on a zero denoiser of the network's σ range and a
    1-element latent: a bad sampler value (``sampler.rho=-1``, an unknown solver) fails before training, not in the
    sample grids and the final report at the end of the run. New solvers and discretizations are checked alike."""
    from edmlab.sampling.sampler import sample

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


def launched_first() -> bool:
    """Whether this is the first process of the run as its launcher numbers them (torchrun's RANK, Lightning's
    children's LOCAL_RANK/NODE_RANK, SLURM's task id). The others share rank 0's run dir, which by the time they
    start may already hold rank 0's config.yaml."""
    return all(int(os.environ.get(k, 0) or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


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


def use_run_id(cfg: DictConfig, output_dir: Path) -> str | None:
    """The W&B run id of this run: the one its dir's ``run.json`` keeps (a resume continues the same W&B run),
    else a new one; set as ``logger.wandb.id`` unless the user gave one. None without a W&B logger."""
    wandb = (cfg.get("logger") or {}).get("wandb")
    if wandb is None:
        return None
    if not wandb.get("id"):
        with open_dict(cfg):
            cfg.logger.wandb.id = stored_run_id(output_dir) or secrets.token_hex(6)
    return str(cfg.logger.wandb.id)


def batch_split(batch_size: int, batch_gpu: int | None, world: int) -> tuple[int, int]:
    """(per-device micro-batch, accumulation rounds) with batch = world × rounds × micro (EDM batch / batch_gpu)."""
    _need(batch_size % world == 0, f"batch_size={batch_size} is not divisible by the {world} devices")
    per_device = batch_size // world
    micro = min(batch_gpu or per_device, per_device)
    _need(per_device % micro == 0, f"batch_gpu={batch_gpu} must divide the per-device batch {per_device}")
    return micro, per_device // micro


def model_spec(cfg: DictConfig, datamodule) -> dict:
    """The network's spec; its shape is the codec's latent shape of the data items (``codec.latent_shape``: the
    items themselves for pixels, ``[L, H, W]`` for the ``[2L, H, W]`` moments of a latent data set)."""
    shape = tuple(codec_class(cfg.get("codec")).latent_shape(datamodule.shape))
    kwargs = dict(datamodule.network_kwargs if shape == tuple(datamodule.shape) else network_kwargs(shape))
    kwargs["label_dim"] = datamodule.label_dim
    kwargs["augment_dim"] = AUGMENT_DIM if cfg.get("augment") else 0
    return {"network": OmegaConf.to_container(cfg.network, resolve=True),
            "network_kwargs": kwargs,
            "preconditioning": with_boundary(OmegaConf.to_container(cfg.preconditioning, resolve=True),
                                             cfg.get("objective")),
            "shape": list(shape)}


def with_boundary(preconditioning: dict, objective) -> dict:
    """The preconditioning of a consistency objective (one with ``boundary_sigma``) made a consistency function:
    EDM's (or EDM2's) with that ``boundary_sigma`` ε, so f(x, ε) = x (``edmlab.design.consistency``)."""
    epsilon = (objective or {}).get("boundary_sigma")
    if epsilon is None:
        return preconditioning
    from edmlab.design.preconditioning import EDMPrecond
    from edmlab.infra.spec import resolve

    target = preconditioning.get("_target_")
    _need(isinstance(target, str) and isinstance(resolve(target), type) and issubclass(resolve(target), EDMPrecond),
          f"objective={objective.get('_target_', '?').rsplit('.', 1)[-1]} trains a consistency model on EDM's "
          f"preconditioning with the boundary c_skip/c_out; preconditioning={target} has none: use "
          f"preconditioning=edm or edm2")
    _need(not (str(objective.get("_target_", "")).endswith("SCMObjective") and target.endswith("EDM2Precond")),
          "objective=scm differentiates the network forward (torch.func.jvp), and EDM2's forced weight "
          "normalisation writes its weights in place during the forward: use preconditioning=edm")
    return {**preconditioning, "boundary_sigma": epsilon}


def check_codec(cfg: DictConfig):
    """The run's codec, built and checked before anything is written: no augmentation in a latent space (EDM2
    trains its latents without: its augmentations act on pixels) and a VAE whose weights load (the previews and the
    final report decode with it, at the end). The data are checked against it by ``codec.check_data``."""
    spec = OmegaConf.to_container(cfg.codec, resolve=True) if cfg.get("codec") is not None else None
    codec = build_codec(spec)
    augment = cfg.get("augment")
    if codec.name != "pixels" and augment:
        choice = HydraConfig.get().runtime.choices.get("augment") if HydraConfig.initialized() else None
        raise ConfigError(f"augment={choice or augment.get('_target_')} with codec={codec.name}: EDM2 trains latents "
                          f"without augmentation (its augmentations act on pixels); use augment=none")
    return codec.load()


def check_data(codec, datamodule) -> None:
    """``codec.check_data`` on the data set's item shape, naming its path: a pixel set under codec=sd_vae, moments
    of another channel count, moments under codec=pixels."""
    dataset = datamodule.dataset
    path = getattr(dataset, "path", None)
    codec.check_data(datamodule.shape, f"data.dataset.path={path}" if path else f"the {type(dataset).__name__}")


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


def instantiate_all(cfg: DictConfig, group: str, leave_out: tuple[str, ...] = ()) -> list:
    """The objects of a group of named ``_target_`` nodes (callbacks, logger), but those named in ``leave_out``."""
    nodes = cfg.get(group) or {}
    for name, node in nodes.items():
        _need(node is None or "_target_" in node,
              f"{group}.{name} has no _target_ (keys {sorted(node or {})}): the {group} option chosen does not define "
              f"{name}, yet something (an experiment preset?) sets {group}.{name}.*; pick a {group} option that has "
              f"it, or remove those keys")
    return [instantiate(node) for name, node in nodes.items() if node is not None and name not in leave_out]


def quiet_loggers(cfg: DictConfig, max_steps: int) -> tuple[str, ...]:
    """The logger entries a run leaves out because they would receive no training curve: W&B (``logger.wandb``)
    in a run of fewer optimizer steps than ``trainer.log_every_n_steps`` or under ``trainer.fast_dev_run`` (which
    mutes every logger). Its offline start costs seconds, and metrics.json and the CSV log hold the same final
    numbers; ``trainer.log_every_n_steps`` at most the run's steps keeps it."""
    if (cfg.get("logger") or {}).get("wandb") is None:
        return ()
    if cfg.trainer.get("fast_dev_run"):
        return ("wandb",)
    every = cfg.trainer.get("log_every_n_steps") or 50
    if max_steps >= every:
        return ()
    rank_zero_info(f"W&B left out: the run trains {max_steps} step{'s' * (max_steps != 1)}, fewer than "
                   f"trainer.log_every_n_steps={every}, so it would log no curve (metrics.json and the CSV log hold "
                   f"its numbers); trainer.log_every_n_steps={max(max_steps, 1)} keeps it")
    return ("wandb",)


def build(cfg: DictConfig):
    """(trainer, module, datamodule) of a training config; raises ConfigError/ValueError before writing anything.

    The Trainer comes first so that the batch split uses the number of processes Lightning resolved
    (devices=-1/"auto"); its ``accumulate_grad_batches`` is a plain attribute read by the loop, set here."""
    from edmlab.training.datamodule import EDMDataModule  # noqa: F401  (import errors surface here, not inside instantiate)
    from edmlab.training.module import EDMModule

    check_train_config(cfg)
    share_the_machine(cfg.get("threads"))
    ckpt = checkpoint_file(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if ckpt is not None:
        with open_dict(cfg):
            cfg.ckpt_path = str(ckpt)  # a run dir names its checkpoints/last.ckpt
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    max_steps = cfg.trainer.max_steps
    if max_steps is None or max_steps < 0:
        max_steps = math.ceil(cfg.duration_kimg * 1000 / cfg.batch_size)
    if cfg.get("tags") is not None:
        with open_dict(cfg):
            cfg.tags = [str(tag) for tag in cfg.tags]
    codec = check_codec(cfg)
    callbacks = instantiate_all(cfg, "callbacks")
    loggers = instantiate_all(cfg, "logger", leave_out=quiet_loggers(cfg, max_steps))
    callbacks = guarded_first([RunGuard(Path(cfg.paths.output_dir) / "checkpoints"), *callbacks])
    trainer = hydra.utils.instantiate(cfg.trainer, max_steps=max_steps, callbacks=callbacks, logger=loggers or False,
                                      plugins=[SafeCheckpointIO()])
    micro, rounds = batch_split(cfg.batch_size, cfg.batch_gpu, world_size(trainer))
    trainer.accumulate_grad_batches = rounds
    datamodule = instantiate(cfg.data, batch_size=micro)
    check_data(codec, datamodule)
    spec = model_spec(cfg, datamodule)
    container = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                 for k, v in cfg.items_ex(resolve=True) if k != "hydra"}
    module = EDMModule(model=spec,
                       noise_distribution=container["noise_distribution"],
                       loss_weighting=container["loss_weighting"],
                       objective=container.get("objective"), codec=container.get("codec"),
                       augment=container.get("augment"),
                       optim=container["optim"], ema=container["ema"], sampler=container["sampler"],
                       lr_schedule=container.get("lr_schedule"),
                       batch_size=cfg.batch_size, seed=cfg.seed, config=container,
                       compile=bool(cfg.get("compile", False)), channels_last=bool(cfg.get("channels_last", False)))
    if cfg.get("init_from"):
        from edmlab.io.network_file import init_from  # fine-tuning: the weights of a network.pt, run dir or NVlabs .pkl

        init_from(cfg.init_from, spec, module.net, module.ema)
    check_sampler(module.net, container["sampler"])
    if ckpt is not None:
        check_resume(ckpt, module, max_steps)
    return trainer, module, datamodule


def check_resume(ckpt: Path, module, max_steps: int) -> None:
    """The checkpoint ``ckpt_path`` names fits this run (``EDMModule.check_resume``) and leaves steps to train."""
    checkpoint = read_checkpoint(ckpt)
    module.check_resume(checkpoint, f"ckpt_path={ckpt}")
    done = int(checkpoint["global_step"])
    _need(done < max_steps, f"ckpt_path={ckpt} is at step {done} and this run ends at step {max_steps} "
                            f"(duration_kimg / trainer.max_steps): the run is already complete; raise duration_kimg "
                            f"to train it further")


def resume_command(output_dir: Path) -> str:
    """The command that resumes the run in ``output_dir`` in place: this job's overrides (not the launcher's, the
    run dir's or the checkpoint's) with ``hydra.run.dir`` and ``ckpt_path`` both naming the dir."""
    overrides = []
    if HydraConfig.initialized():
        skip = ("hydra.", "launcher=", "+launcher=", "ckpt_path=", "+ckpt_path=")
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(skip)]
    where = shlex.quote(str(output_dir))
    return shlex.join(["python", "src/train.py", *overrides]) + f" hydra.run.dir={where} ckpt_path={where}"


def print_summary(output_dir: Path, trainer: L.Trainer, module, stop: Interrupted | None = None) -> None:
    """The run's last words (``run_dir.summary``): after a stop signal its step and the resume command, else its
    final report's scores and files."""
    if stop is not None:
        status = {"step": trainer.global_step, "kimg": module.cur_nimg / 1000,
                  "train_loss": getattr(module, "step_loss", None)}
        lines = summary(output_dir, status, stopped=f"{signal.Signals(stop.signum).name}: stopped, no final report",
                        resume=resume_command(output_dir))
    else:
        metrics_file = output_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        report = next((c for c in trainer.callbacks if isinstance(c, FinalReport)), None)
        lines = summary(output_dir, metrics, note=getattr(report, "note", None))
    print("\n".join(lines), flush=True)


def train(cfg: DictConfig) -> dict:
    """Train, and return the final metrics (also in <run dir>/metrics.json; rank 0 only, {} on the other ranks).
    Rank 0 ends with ``print_summary``, after a stop signal too."""
    check_run_dir()
    output_dir = Path(cfg.paths.output_dir)
    ckpt = checkpoint_file(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if launched_first():
        check_run_dir_free(output_dir, ckpt)
    run_id = use_run_id(cfg, output_dir)
    trainer, module, datamodule = build(cfg)
    zero = is_global_zero(trainer)
    if zero:
        claim(output_dir, run_id)
        atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    except Interrupted as stop:
        if zero:
            print_summary(output_dir, trainer, module, stop)
        raise
    finally:
        release(output_dir)
    if zero:
        print_summary(output_dir, trainer, module)
    metrics_file = output_dir / "metrics.json"
    return json.loads(metrics_file.read_text()) if zero and metrics_file.is_file() else {}
