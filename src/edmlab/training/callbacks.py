"""Callbacks of a training run: kimg, img/s and lr in the progress bar, sample grids from the EMA weights, and the
end-of-run report (network export, samples.png, metrics.json)."""
import math
import time
from collections import deque
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


def log_image(trainer, key: str, path: Path) -> None:
    """The PNG at ``path`` to the run's W&B and TensorBoard loggers under ``key`` (the others take no images)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, [str(path)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            import numpy as np
            from PIL import Image

            with Image.open(path) as picture:
                pixels = np.asarray(picture.convert("RGB"))
            logger.experiment.add_image(key, pixels, trainer.global_step, dataformats="HWC")


class ProgressStats(L.Callback):
    """``kimg``, ``img/s`` and ``lr`` beside the loss in the progress bar, after every optimizer step:
    kimg = global_step · batch_size / 1000 (images seen, EDM's unit), lr = the rate of the step just taken, and
    img/s = the images of the last ``window`` optimizer steps over their wall time, rounded (from the second step
    on). Progress bar only: the loggers have ``train/kimg`` and ``train/lr`` from the module already."""

    def __init__(self, window: int = 20):
        check_counts("progress", window=(window, 1))
        self.window = window
        self._ends = deque(maxlen=window + 1)

    def on_train_start(self, trainer, module):
        self._ends.clear()

    def stats(self, trainer, module, now: float) -> dict:
        """The values shown after the step that ended at ``now`` (seconds)."""
        self._ends.append((now, trainer.global_step))
        shown = {"kimg": trainer.global_step * module.batch_size / 1000}
        (t0, s0), (t1, s1) = self._ends[0], self._ends[-1]
        if s1 > s0 and t1 > t0:
            shown["img/s"] = round((s1 - s0) * module.batch_size / (t1 - t0))  # 1440, not 1.44e+3
        if trainer.optimizers:
            shown["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        return shown

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches or trainer.progress_bar_callback is None:
            return
        module.log_dict(self.stats(trainer, module, time.perf_counter()), prog_bar=True, logger=False,
                        on_step=True, on_epoch=False)


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end) draw ``num_images`` with the configured sampler
    from the EMA weights, always from the same seeds, and save ``samples/step_XXXXXXX.png``; sent to W&B and
    TensorBoard too."""

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
        log_image(trainer, "samples", path)
        return images

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step > 0 and getattr(self, "_last", -1) != step:
            self._last = step
            self.draw(trainer, module)


class FinalReport(L.Callback):
    """At the end of training (rank 0): export ``network.pt`` (EMA weights + resolved config), draw the report's
    samples (``sample_count``), ``batch`` per network call, into ``samples.png``, score them with the data set's
    metric, write ``metrics.json``.

    The sample count follows the run: a run of at least ``full_from_kimg`` kimg draws ``num_samples`` (make
    train's 500 kimg and a study's 25-50 kimg: the 297 images of the digits held-out split); a shorter one draws
    ⌈num_samples · kimg / full_from_kimg⌉, at least ``min_samples`` (a 1-step smoke run need not draw 297).
    ``full_from_kimg=0``: always ``num_samples``; ``num_samples=0``: nothing drawn or scored (network.pt and
    metrics.json are still written). Without a data-set metric only the ``grid_images`` shown are drawn. The
    floor is scored at the count drawn."""

    def __init__(self, output_dir: str, num_samples: int = 1000, grid_images: int = 100, seed: int = 0,
                 scale: int = 4, batch: int = 64, full_from_kimg: float = 10, min_samples: int = 16):
        check_counts("final_report", num_samples=(num_samples, 0), grid_images=(grid_images, 0), batch=(batch, 1),
                     seed=(seed, 0), min_samples=(min_samples, 1))
        if isinstance(full_from_kimg, bool) or not isinstance(full_from_kimg, (int, float)) \
                or not full_from_kimg >= 0:
            raise ValueError(f"callbacks.final_report.full_from_kimg={full_from_kimg!r} must be a number >= 0 "
                             f"(0: every run draws num_samples)")
        self.output_dir, self.num_samples, self.grid_images = Path(output_dir), num_samples, grid_images
        self.seed, self.scale, self.batch = seed, scale, batch
        self.full_from_kimg, self.min_samples = full_from_kimg, min_samples
        self._start = None
        self.note = None  # why the report drew fewer than num_samples, for the end-of-run summary

    def sample_count(self, kimg: float, scored: bool) -> int:
        """Images the report draws after ``kimg`` thousand images of training (class docstring)."""
        count = self.num_samples
        if count and self.full_from_kimg and kimg < self.full_from_kimg:
            count = min(count, max(self.min_samples, math.ceil(count * kimg / self.full_from_kimg)))
        return count if scored else min(count, max(self.grid_images, 1))

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
        kimg = trainer.global_step * module.batch_size / 1000
        scorer = dataset_metric(trainer.datamodule.dataset) if trainer.datamodule is not None else None
        count = self.sample_count(kimg, scorer is not None)
        if scorer is not None and count < self.num_samples:
            self.note = (f"not {self.num_samples}: a {kimg:g}-kimg run, the full report from "
                         f"{self.full_from_kimg:g} kimg (callbacks.final_report.full_from_kimg)")
        t0 = time.time()
        samples = self.draw(module, count) if count else None
        sample_sec = time.time() - t0
        if samples is not None and samples.ndim == 4:
            save_grid(samples[: self.grid_images], out / "samples.png", scale=self.scale)
        elif samples is not None and samples.ndim == 2 and samples.shape[1] == 2:
            from edmlab.viz.points import save_scatter

            save_scatter(samples, out / "samples.png")
        metrics = {"step": trainer.global_step, "kimg": kimg,
                   "train_sec": train_sec, "sample_sec": sample_sec,
                   "num_samples": count,
                   "nfe": nfe(**module.hparams.sampler) if module.hparams.sampler.get("solver") != "adaptive" else None}
        if getattr(module, "step_loss", None) is not None:
            metrics["train_loss"] = module.step_loss  # the last step's per-pixel mean loss, as train/loss
        steps = trainer.global_step - getattr(self, "_start_step", 0)
        if metrics["train_sec"] > 0:
            metrics["images_per_sec"] = steps * module.batch_size / metrics["train_sec"]
        if scorer is not None and samples is not None:
            metrics.update(scorer(samples))
            metrics["floor"] = scorer.floor(len(samples))
        atomic_write_json(out / "metrics.json", metrics)
        flat = {f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=trainer.global_step)
        if samples is not None and samples.ndim == 4:
            log_image(trainer, "final/samples", out / "samples.png")
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
        log_image(trainer, "final/loss_per_sigma", path)
