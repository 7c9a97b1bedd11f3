"""Callbacks of a training run: sample grids from the EMA weights, and the end-of-run report (network export,
samples.png, metrics.json)."""
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from edmlab.io.network_file import save_network
from edmlab.infra.files import atomic_write_json
from edmlab.infra.images import save_grid
from edmlab.evaluation.metrics.for_dataset import dataset_metric
from edmlab.sampling.planning import nfe
from edmlab.training.guard import TrainingDiverged, weights_finite


def check_counts(group: str, **values: tuple[int, int]) -> None:
    """Each ``name=(value, least)`` is an integer >= least, else a ValueError naming ``group.name`` (at build)."""
    for name, (value, least) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"callbacks.{group}.{name}={value!r} must be an integer >= {least}")


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end) draw ``num_images`` with the configured sampler
    from the EMA weights, always from the same seeds, and save ``samples/step_XXXXXXX.png``; logged to W&B too."""

    def __init__(self, output_dir: str, every_n_steps: int = 1000, num_images: int = 64, seed: int = 0,
                 scale: int = 4):
        check_counts("sample_grid", every_n_steps=(every_n_steps, 0), num_images=(num_images, 1), seed=(seed, 0))
        self.output_dir, self.every_n_steps, self.num_images = Path(output_dir), every_n_steps, num_images
        self.seed, self.scale = seed, scale

    @rank_zero_only
    def draw(self, trainer, module):
        images = module.generate(range(self.seed, self.seed + self.num_images)).float()
        if images.ndim != 4:
            return None
        path = save_grid(images, self.output_dir / "samples" / f"step_{trainer.global_step:07d}.png", scale=self.scale)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples", [str(path)], step=trainer.global_step)
        return images

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step > 0 and getattr(self, "_last", -1) != step:
            self._last = step
            self.draw(trainer, module)


class FinalReport(L.Callback):
    """At the end of training (rank 0): export ``network.pt`` (EMA weights + resolved config), draw
    ``num_samples`` images when the data set has a metric (else only the ``grid_images`` shown), ``batch`` per
    network call, into ``samples.png``, score them with the data set's metric, write ``metrics.json``."""

    def __init__(self, output_dir: str, num_samples: int = 1000, grid_images: int = 100, seed: int = 0,
                 scale: int = 4, batch: int = 64):
        check_counts("final_report", num_samples=(num_samples, 1), grid_images=(grid_images, 0), batch=(batch, 1),
                     seed=(seed, 0))
        self.output_dir, self.num_samples, self.grid_images = Path(output_dir), num_samples, grid_images
        self.seed, self.scale, self.batch = seed, scale, batch
        self._start = None

    def draw(self, module, count: int) -> torch.Tensor:
        """Images of seeds ``seed … seed + count − 1``, ``batch`` at a time (the same images as in one batch)."""
        return module.generate(range(self.seed, self.seed + count), batch=self.batch).float().cpu()

    def on_train_start(self, trainer, module):
        self._start, self._start_step = time.time(), trainer.global_step

    @rank_zero_only
    def on_train_end(self, trainer, module):
        out = self.output_dir
        config = module.hparams.config
        if not weights_finite(module.ema):
            raise TrainingDiverged(f"the EMA weights are not finite at step {trainer.global_step}: no network.pt is "
                                   f"written from them; lower optim.lr and train again")
        save_network(out / "network.pt", module.ema, dict(module.hparams.model), config)
        train_sec = time.time() - (self._start or time.time())
        scorer = dataset_metric(trainer.datamodule.dataset) if trainer.datamodule is not None else None
        count = self.num_samples if scorer is not None else min(self.num_samples, max(self.grid_images, 1))
        t0 = time.time()
        samples = self.draw(module, count)
        sample_sec = time.time() - t0
        if samples.ndim == 4:
            save_grid(samples[: self.grid_images], out / "samples.png", scale=self.scale)
        elif samples.ndim == 2 and samples.shape[1] == 2:
            from edmlab.viz.points import save_scatter

            save_scatter(samples, out / "samples.png")
        metrics = {"step": trainer.global_step, "kimg": trainer.global_step * module.batch_size / 1000,
                   "train_sec": train_sec, "sample_sec": sample_sec,
                   "num_samples": count,
                   "nfe": nfe(**module.hparams.sampler) if module.hparams.sampler.get("solver") != "adaptive" else None}
        if getattr(module, "step_loss", None) is not None:
            metrics["train_loss"] = module.step_loss  # the last step's per-pixel mean loss, as train/loss
        steps = trainer.global_step - getattr(self, "_start_step", 0)
        if metrics["train_sec"] > 0:
            metrics["images_per_sec"] = steps * module.batch_size / metrics["train_sec"]
        if scorer is not None:
            metrics.update(scorer(samples))
            metrics["floor"] = scorer.floor(len(samples))
        atomic_write_json(out / "metrics.json", metrics)
        flat = {f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=trainer.global_step)
        if samples.ndim == 4:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image("final/samples", [str(out / "samples.png")], step=trainer.global_step)
        self.loss_figure(trainer)

    def loss_figure(self, trainer):
        """EDM Fig. 5a, the loss per σ at several points of training (``edmlab.viz.loss_curves``), from the CSV log
        flushed here: ``loss_per_sigma.png`` in the run dir and on W&B; skipped without a CSV log or logged bins."""
        from edmlab.viz.loss_curves import plot_run

        for logger in trainer.loggers:
            logger.save()
        try:
            path = plot_run(self.output_dir)
        except (FileNotFoundError, ValueError):
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("final/loss_per_sigma", [str(path)], step=trainer.global_step)
