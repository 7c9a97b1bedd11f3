"""The LightningModule of a training run: a preconditioned network, the loss, Adam with EDM's learning-rate
ramp-up, gradients through nan_to_num, and EDM's image-count EMA (NVlabs/edm training_loop.py).

Every random draw of a step is a function of (seed, step): σ and the noise of the whole *global* batch come from a
generator seeded by the step, and each device takes its images' rows. A resumed run therefore repeats the draws
of an uninterrupted one, and a run on W devices draws what a run on one device does. The checkpoint stores
cur_nimg, batch_size and the seeds; resuming with another batch_size or seed is refused (the LR and EMA schedules,
the data order and every draw follow from them).

Logged statistics are those of NVlabs/edm's training_stats 'Loss/loss': ``train/loss`` is the per-pixel mean of
λ(σ)·‖D(y + n; σ) − y‖² over the images of the logged optimizer step (every micro-batch, every rank), and
``loss_per_sigma/<lo>-<hi>`` the same mean per σ bin over the steps since the previous log (NaN if none fell in
the bin). The optimised loss keeps
NVlabs' reduction instead: the sum over pixels, mean over images (so its learning rates carry over).
"""
import math

import lightning as L
import numpy as np
import torch

from edmlab.infra.spec import build
from edmlab.io.network_file import build_denoiser
from edmlab.sampling.generation import draw
from edmlab.codec import build_codec
from edmlab.design.objectives import build_objective
from edmlab.design.lr_schedules import EDMSchedule
from edmlab.training.ema import RunFiles

SIGMA_BINS = torch.logspace(math.log10(0.002), math.log10(80.0), 9)


def build_group(group: str, spec: dict, **extra):
    """``build`` of the ``_target_`` spec of config group ``group``. A ``kind:`` spec (the form of edmlab's configs and
    checkpoints before the ema and lr_schedule options named their class) is refused in one line."""
    if "_target_" not in spec:
        kind = spec.get("kind")
        raise ValueError(f"{group}={spec} names no _target_: {group}.kind={kind!r} is the form written before the "
                         f"{group} options named their class; give it the _target_ of conf/{group}/{kind}.yaml, or "
                         f"train (and resume) with src/train.py {group}={kind}")
    return build(spec, **extra)


class EDMModule(L.LightningModule):
    """``model``: {network, network_kwargs, preconditioning} specs (``_target_`` dicts); ``noise_distribution``,
    ``loss_weighting`` and ``augment`` likewise (augment may be None); ``optim``: lr, betas, eps, lr_rampup_kimg;
    ``ema``: the ``ema`` group's spec (``edmlab.training.ema``, built with ``net=`` the network);
    ``lr_schedule``: the ``lr_schedule`` group's spec (``edmlab.design.lr_schedules``; None: EDM's ramp-up from
    ``optim``);
    ``sampler``: keyword arguments of ``edmlab.sample`` for previews;
    ``batch_size``: the global batch (images per optimizer step over all devices).

    Speed options: ``channels_last`` stores the UNet's 4-D weights and the images NHWC (faster convolutions with
    tensor cores); ``compile`` compiles the raw network F in place (``nn.Module.compile``, so the state_dict keys
    stay those of the plain network) when fitting starts. Under ``trainer.precision=bf16-mixed`` only F runs in
    bf16: the preconditioning coefficients, D = c_skip·x + c_out·F and the loss are elementwise float32 ops,
    which autocast leaves in float32."""

    def __init__(self, model: dict, noise_distribution: dict, loss_weighting: dict, augment: dict | None,
                 optim: dict, ema: dict, sampler: dict, batch_size: int, seed: int = 0, config: dict | None = None,
                 compile: bool = False, channels_last: bool = False, lr_schedule: dict | None = None,
                 objective: dict | None = None, codec: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_denoiser(model)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.ema_tracker = build_group("ema", ema, net=self.net)
        self.ema = self.ema_tracker.averages[0]  # previews and network.pt; with ema=power the first std's EMA
        if len(self.ema_tracker.averages) > 1:
            self.ema_others = torch.nn.ModuleList(self.ema_tracker.averages[1:])
        self.loss_fn = build_objective(objective, build(noise_distribution), build(loss_weighting))
        if isinstance(self.loss_fn.weighting, torch.nn.Module):
            self.loss_weighting = self.loss_fn.weighting  # learned u(σ): trained with the net, saved in checkpoints
        self.augment_pipe = build(augment) if augment else None
        self.codec = build_codec(codec)
        self.lr_schedule = (build_group("lr_schedule", lr_schedule) if lr_schedule else
                            EDMSchedule(optim["lr"], optim.get("lr_rampup_kimg", 10000)))
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        # Σ per-pixel loss and image count, per σ bin since the last log (columns 0…9) and over the micro-batches of
        # the current step (column 10), kept on the training device: one host sync and all-reduce per log. A plain
        # tensor, not a buffer: DDP would overwrite every rank's buffers with rank 0's at each forward.
        self._sums = torch.zeros(2, len(SIGMA_BINS) + 2)
        self._first_nonfinite = torch.tensor([-1.0, 0.0])  # (step, loss) of the first non-finite step loss
        self.register_buffer("_bin_edges", SIGMA_BINS.clone(), persistent=False)

    def on_train_start(self):
        """Each process gets its own bins: ddp_spawn sends the module to its processes through torch.multiprocessing,
        which puts CPU tensors in shared memory, and the ranks would then add into (and zero) one tensor at once."""
        self._sums = torch.zeros_like(self._sums, device=self.device)
        self._first_nonfinite = torch.tensor([-1.0, 0.0], device=self.device)
        self.ema_tracker.at_start(self.cur_nimg, self._run_files())

    def _run_files(self) -> RunFiles | None:
        """What the EMA tracker's files carry, in the process that writes the run's files (rank 0), else None."""
        return RunFiles(dict(self.hparams.model), self.hparams.config) if self.trainer.is_global_zero else None

    def setup(self, stage: str):
        if stage == "fit" and self.hparams.compile and not getattr(self, "_compiled", False):
            self.net.model.compile()
            self._compiled = True

    @property
    def cur_nimg(self) -> int:
        return self.trainer.global_step * self.batch_size

    def _step_draws(self, images: torch.Tensor, batch_idx: int):
        """σ and unit noise of this device's rows of the global batch of the current step, drawn on the images'
        device (a GPU draws the global batch in microseconds, where a CPU draw would stall every step at scale)."""
        trainer = self.trainer
        world, rank, accum = trainer.world_size, trainer.global_rank, trainer.accumulate_grad_batches
        b, device = images.shape[0], images.device
        if world * accum * b != self.batch_size:
            raise ValueError(f"global batch {self.batch_size} != devices {world} × accumulation {accum} × "
                             f"per-device batch {b}; set batch_size divisible by devices × batch_gpu")
        g = torch.Generator(device).manual_seed(self.seed * 1_000_003 + trainer.global_step)
        sigma = self.loss_fn.noise_distribution.sample(self.batch_size, generator=g, device=device)
        noise = torch.randn(self.batch_size, *images.shape[1:], generator=g, device=device)
        rows = (world * ((batch_idx % accum) * b + torch.arange(b)) + rank).to(device)
        self._seed_dropout((self.seed * 1_000_003 + trainer.global_step) * 4099 + rank * accum + batch_idx % accum,
                           device)
        return sigma[rows], noise[rows]

    @staticmethod
    def _seed_dropout(seed: int, device: torch.device):
        """Seed the generator that dropout and augmentation use on ``device`` (torch.manual_seed would also queue
        a seeding of every other backend, with a stack trace each step, when CUDA is not in use)."""
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        """Under a latent codec, the data set's moments become the network's x on the device, a fresh latent per
        minibatch as in EDM2: ``codec.sample(moments)`` with ε drawn for the whole *global* batch of the current step
        from a generator seeded by (seed, global step), of which this micro-batch takes its rows, as ``_step_draws``
        does for σ and the noise. A resumed run, or one on W devices, so draws the latents of an uninterrupted
        one-device run. ``codec=pixels``: the batch as it is."""
        if self.codec.name == "pixels" or not self.trainer.training:
            return batch
        moments, labels = batch
        trainer = self.trainer
        step, world, rank, accum = (trainer.global_step, trainer.world_size, trainer.global_rank,
                                    trainer.accumulate_grad_batches)
        last_step, last_micro = getattr(self, "_latent_micro_batch", (-1, -1))
        micro = last_micro + 1 if last_step == step else 0  # a step's micro-batches arrive in order
        self._latent_micro_batch = (step, micro)
        b = moments.shape[0]
        rows = (world * ((micro % accum) * b + torch.arange(b)) + rank).to(moments.device)
        noise = GlobalBatchNoise(latent_seed(self.seed, step), world * accum * b, rows)
        return self.codec.sample(moments, noise), labels

    def training_step(self, batch, batch_idx):
        images, labels = batch
        labels = labels if labels.shape[-1] > 0 else None
        self.loss_fn.set_progress(self.cur_nimg)
        sigma, noise = self._step_draws(images, batch_idx)
        if self.hparams.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        out = self.loss_fn(self.net, images, labels, self.augment_pipe, sigma=sigma, noise=noise)
        self._accumulate(out.per_image / images[0].numel(), out.sigma)
        return out.loss

    def _accumulate(self, per_pixel_loss, sigma):
        """Add the images' per-pixel losses to their σ bin and to the step's column."""
        per_pixel_loss = per_pixel_loss.detach().float()
        ones = torch.ones_like(per_pixel_loss)
        self._sums = self._sums.to(per_pixel_loss.device)
        index = torch.bucketize(sigma.detach(), self._bin_edges)
        for column in (index, torch.full_like(index, self._sums.shape[1] - 1)):
            self._sums[0].index_add_(0, column, per_pixel_loss)
            self._sums[1].index_add_(0, column, ones)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """At the last micro-batch of every log_every_n_steps-th step (and of the last step): log the step's mean
        loss and the per-σ means over all ranks, then start new bins; the step's column restarts every step."""
        trainer = self.trainer
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        step = trainer.global_step
        if step % max(trainer.log_every_n_steps, 1) == 0 or step >= trainer.max_steps:
            sums, counts = trainer.strategy.reduce(self._sums.clone(), reduce_op="sum").tolist()
            edges = [0.0] + SIGMA_BINS.tolist() + [math.inf]
            stats = {f"loss_per_sigma/{edges[k]:.3g}-{edges[k + 1]:.3g}": sums[k] / counts[k] if counts[k] else math.nan
                     for k in range(len(edges) - 1)}  # NaN: no image in that bin (not the previous log's value)
            self.step_loss = sums[-1] / counts[-1]
            self.log("train/loss", self.step_loss, prog_bar=True, on_step=True, on_epoch=False)
            self.log_dict(stats, on_step=True, on_epoch=False)
            if hasattr(self.loss_fn.weighting, "u"):
                self.log_dict(self._learned_u(edges, counts), on_step=True, on_epoch=False)
            self._sums.zero_()
        self._track_nonfinite(step)
        self._sums[:, -1] = 0

    def _track_nonfinite(self, step: int):
        """Remember, on the device (no host sync), the first step whose loss was not finite."""
        loss = self._sums[0, -1]
        first = (~torch.isfinite(loss)) & (self._first_nonfinite[0] < 0)
        record = torch.stack([torch.full_like(loss, step), loss])
        self._first_nonfinite = torch.where(first, record, self._first_nonfinite)

    def first_nonfinite_step(self) -> tuple[int, float] | None:
        """(step, loss) of the first optimizer step whose mean loss was not finite, the current one included (the
        run guard asks before this module's ``on_train_batch_end``), else None. One host sync."""
        step, loss = self._first_nonfinite.tolist()
        if step >= 0:
            return int(step), loss
        loss = float(self._sums[0, -1])
        return (self.trainer.global_step, loss) if not math.isfinite(loss) else None

    @torch.no_grad()
    def _learned_u(self, edges, counts) -> dict:
        """u(σ) of a learned weighting at the geometric centre of each σ bin that has images (e^u tracks the bin's
        mean loss): ``learned_u/<lo>-<hi>``, next to ``loss_per_sigma/<lo>-<hi>``."""
        inner = [min(max(e, edges[1]), edges[-2]) for e in edges]
        centers = torch.tensor([math.sqrt(a * b) for a, b in zip(inner[:-1], inner[1:])], device=self.device)
        u = self.loss_fn.log_variance(self.net, centers).tolist()
        return {f"learned_u/{edges[k]:.3g}-{edges[k + 1]:.3g}": u[k] for k in range(len(u)) if counts[k] > 0}

    def configure_optimizers(self):
        o = self.hparams.optim
        params = list(self.net.parameters()) + (list(self.loss_weighting.parameters())
                                                if hasattr(self, "loss_weighting") else [])
        return torch.optim.Adam(params, lr=o["lr"], betas=tuple(o.get("betas", (0.9, 0.999))),
                                eps=o.get("eps", 1e-8))

    def learning_rate(self, cur_nimg: int) -> float:
        """α(cur_nimg) of the ``lr_schedule`` (``edmlab.design.lr_schedules``); by default EDM's ramp-up from ``optim``."""
        return self.lr_schedule(cur_nimg)

    def on_before_optimizer_step(self, optimizer):
        for p in (p for group in optimizer.param_groups for p in group["params"]):  # the net and a learned u(σ)
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        cur_nimg = self.cur_nimg
        lr = self.learning_rate(cur_nimg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step(closure=optimizer_closure)
        self.ema_tracker.after_step(cur_nimg, self.batch_size, self._run_files())
        self.log_dict({"train/lr": lr, "train/kimg": (cur_nimg + self.batch_size) / 1000}, on_step=True, on_epoch=False)

    def on_train_end(self):
        self.ema_tracker.at_end(self.cur_nimg, self._run_files())

    def _run(self) -> dict:
        """What a resumed run must share with the checkpoint: the schedules, data order and draws follow from the
        batch and the seeds; the saved averages mean what they mean only under the same EMA kind and stds, which the
        tracker describes."""
        config = self.hparams.config or {}
        ema = self.ema_tracker.describe()
        return {"batch_size": self.batch_size, "seed": self.seed, "data.seed": (config.get("data") or {}).get("seed"),
                "ema.kind": ema["kind"], "ema.stds": ema["stds"]}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["edmlab"] = {"model": self.hparams.model, "config": self.hparams.config,
                                "run": {**self._run(), "cur_nimg": self.cur_nimg}, "ema": self.ema_tracker.state_dict()}

    def check_resume(self, checkpoint: dict, path="the checkpoint") -> None:
        """Refuse a checkpoint whose saved state this run would misread, naming both values: another model, batch
        size, seed, data seed, EMA kind or EMA stds, or other saved tensors (a learned λ(σ), another EMA count)."""
        edmlab = checkpoint.get("edmlab") or {}
        run = edmlab.get("run") or {}
        for key, now in self._run().items():
            if key in run and run[key] != now:
                raise ValueError(f"{path} was trained with {key}={run[key]} (at cur_nimg={run.get('cur_nimg')}), "
                                 f"this run has {key}={now}: resume with {key}={run[key]}, or start a new run")
        saved = edmlab.get("model")
        if saved is not None and saved != self.hparams.model:
            diff = {k: (saved.get(k), self.hparams.model.get(k)) for k in set(saved) | set(self.hparams.model)
                    if saved.get(k) != self.hparams.model.get(k)}
            raise ValueError(f"{path} was trained with another model: {diff} (checkpoint, now). Resume with "
                             f"the same network/preconditioning/data options, or start a new run")
        ours, theirs = set(self.state_dict()), set(checkpoint.get("state_dict") or {})
        if theirs and ours != theirs:
            raise ValueError(f"{path} holds other tensors than this run (only in the checkpoint: "
                             f"{sorted(theirs - ours)[:4]}, only here: {sorted(ours - theirs)[:4]}): resume with the "
                             f"loss_weighting and ema options it was trained with, or start a new run")

    def on_load_checkpoint(self, checkpoint):
        self.check_resume(checkpoint)
        self.ema_tracker.load_state_dict(saved_tracker_state(checkpoint))

    @torch.no_grad()
    def generate(self, seeds, use_ema: bool = True, batch: int | None = None, **overrides) -> torch.Tensor:
        """Samples for a list of seeds (one stream per sample, as NVlabs/edm's generate.py, so the images do not
        depend on ``batch``: at most that many per network call, all at once when None), on the CPU, as pixels:
        a latent codec's samples decoded (``codec.pixels``), so that grids and metrics see images."""
        denoiser, seeds = self.ema if use_ema else self.net, list(seeds)
        samples = draw(denoiser, tuple(self.hparams.model.get("shape") or ()), seeds, batch=batch or len(seeds),
                       sampler_kwargs={**self.hparams.sampler, **overrides}, device=self.device,
                       label_dim=getattr(denoiser, "label_dim", 0)).samples
        return self.codec.pixels(samples, self.device)  # decoded on the device (codec=pixels: as they are)


LATENT_STREAM = 0x1A7E475  # tells the latents' generator apart from the σ/noise one of the same (seed, step)


def latent_seed(seed: int, step: int) -> int:
    """The seed of the latents' ε at optimizer step ``step`` of a run of ``seed``: a hash of (seed, step) (numpy's
    SeedSequence), unrelated to the σ/noise seed seed·1000003 + step and to dropout's."""
    return int(np.random.SeedSequence((int(seed), int(step), LATENT_STREAM)).generate_state(1, np.uint64)[0])


class GlobalBatchNoise:
    """``randn(shape)`` for ``codec.sample``: ε ~ N(0, I) of ``total`` rows from a generator seeded by ``seed`` on the
    rows' device, of which ``rows`` are returned (one device's micro-batch of the global batch)."""

    def __init__(self, seed: int, total: int, rows: torch.Tensor):
        self.seed, self.total, self.rows = seed, int(total), rows

    def randn(self, shape) -> torch.Tensor:
        g = torch.Generator(self.rows.device).manual_seed(self.seed)
        return torch.randn(self.total, *shape, generator=g, device=self.rows.device)[self.rows]


def saved_tracker_state(checkpoint: dict) -> dict:
    """The EMA tracker's ``state_dict`` in a checkpoint; for one written before trackers saved theirs, the same keys
    from its run record (``ema.kind``, ``ema.stds``) and its ``ema`` hyperparameters (``snapshot_dir``)."""
    edmlab = checkpoint.get("edmlab") or {}
    if "ema" in edmlab:
        return edmlab["ema"]
    hparams = (checkpoint.get("hyper_parameters") or {}).get("ema") or {}
    state = {k.removeprefix("ema."): v for k, v in (edmlab.get("run") or {}).items() if k.startswith("ema.")}
    if "snapshot_dir" in hparams:
        state["snapshot_dir"] = hparams["snapshot_dir"]
    return state
