"""The LightningModule of a training run: a preconditioned network, the loss, Adam with EDM's learning-rate
ramp-up, gradients through nan_to_num, and EDM's image-count EMA (NVlabs/edm training_loop.py).

Every random draw of a step is a function of (seed, step): σ and the noise of the whole *global* batch come from a
generator seeded by the step, and each device takes its images' rows. A resumed run therefore repeats the draws
of an uninterrupted one, and a run on W devices draws what a run on one device does.
"""
import copy
import math

import lightning as L
import torch

from ..export import build, build_denoiser
from ..generation import draw
from ..loss import DenoisingLoss
from .ema import ema_beta, ema_update

SIGMA_BINS = torch.logspace(math.log10(0.002), math.log10(80.0), 9)


class EDMModule(L.LightningModule):
    """``model``: {network, network_kwargs, preconditioning} specs (``_target_`` dicts); ``noise_distribution``,
    ``loss_weighting`` and ``augment`` likewise (augment may be None); ``optim``: lr, betas, eps, lr_rampup_kimg;
    ``ema``: halflife_kimg, rampup_ratio; ``sampler``: keyword arguments of ``edmlab.sample`` for previews;
    ``batch_size``: the global batch (images per optimizer step over all devices).

    Speed options: ``channels_last`` stores the UNet's 4-D weights and the images NHWC (faster convolutions with
    tensor cores); ``compile`` compiles the raw network F in place (``nn.Module.compile``, so the state_dict keys
    stay those of the plain network) when fitting starts. Under ``trainer.precision=bf16-mixed`` only F runs in
    bf16: the preconditioning coefficients, D = c_skip·x + c_out·F and the loss are elementwise float32 ops,
    which autocast leaves in float32."""

    def __init__(self, model: dict, noise_distribution: dict, loss_weighting: dict, augment: dict | None,
                 optim: dict, ema: dict, sampler: dict, batch_size: int, seed: int = 0, config: dict | None = None,
                 compile: bool = False, channels_last: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_denoiser(model)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.loss_fn = DenoisingLoss(build(noise_distribution), build(loss_weighting))
        self.augment_pipe = build(augment) if augment else None
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        # Σ loss and count per σ bin since the last log, kept on the training device (no host sync per step).
        self.register_buffer("_bins", torch.zeros(2, len(SIGMA_BINS) + 1), persistent=False)
        self.register_buffer("_bin_edges", SIGMA_BINS.clone(), persistent=False)

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

    def training_step(self, batch, batch_idx):
        images, labels = batch
        labels = labels if labels.shape[-1] > 0 else None
        sigma, noise = self._step_draws(images, batch_idx)
        if self.hparams.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        out = self.loss_fn(self.net, images, labels, self.augment_pipe, sigma=sigma, noise=noise)
        self._accumulate_bins(out.per_image / images[0].numel(), out.sigma)
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=False)
        return out.loss

    def _accumulate_bins(self, per_pixel_loss, sigma):
        index = torch.bucketize(sigma.detach(), self._bin_edges)
        self._bins[0].index_add_(0, index, per_pixel_loss.detach().float())
        self._bins[1].index_add_(0, index, torch.ones_like(per_pixel_loss, dtype=torch.float32))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.trainer.global_step % max(self.trainer.log_every_n_steps, 1):
            return
        sums, counts = self._bins.tolist()
        edges = [0.0] + SIGMA_BINS.tolist() + [math.inf]
        stats = {f"loss_per_sigma/{edges[k]:.3g}-{edges[k + 1]:.3g}": sums[k] / counts[k]
                 for k in range(len(edges) - 1) if counts[k] > 0}
        if stats:
            self.log_dict(stats, on_step=True, on_epoch=False)
        self._bins.zero_()

    def configure_optimizers(self):
        o = self.hparams.optim
        return torch.optim.Adam(self.net.parameters(), lr=o["lr"], betas=tuple(o.get("betas", (0.9, 0.999))),
                                eps=o.get("eps", 1e-8))

    def learning_rate(self, cur_nimg: int) -> float:
        """lr·min(cur_nimg / (lr_rampup_kimg·1000), 1) (EDM's ramp-up)."""
        o = self.hparams.optim
        return o["lr"] * min(cur_nimg / max(o.get("lr_rampup_kimg", 10000) * 1000, 1e-8), 1)

    def on_before_optimizer_step(self, optimizer):
        for p in self.net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        cur_nimg = self.cur_nimg
        lr = self.learning_rate(cur_nimg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step(closure=optimizer_closure)
        e = self.hparams.ema
        ema_update(self.ema, self.net, ema_beta(self.batch_size, cur_nimg, e["halflife_kimg"], e.get("rampup_ratio")))
        self.log_dict({"train/lr": lr, "train/kimg": (cur_nimg + self.batch_size) / 1000}, on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["edmlab"] = {"model": self.hparams.model, "config": self.hparams.config}

    def on_load_checkpoint(self, checkpoint):
        saved = checkpoint.get("edmlab", {}).get("model")
        if saved is not None and saved != self.hparams.model:
            diff = {k: (saved.get(k), self.hparams.model.get(k)) for k in set(saved) | set(self.hparams.model)
                    if saved.get(k) != self.hparams.model.get(k)}
            raise ValueError(f"the checkpoint was trained with another model: {diff} (checkpoint, now). Resume with "
                             f"the same network/preconditioning/data options, or start a new run")

    @torch.no_grad()
    def generate(self, seeds, use_ema: bool = True, **overrides) -> torch.Tensor:
        """Samples for a list of seeds (one stream per sample, as NVlabs/edm's generate.py), on the CPU."""
        denoiser = self.ema if use_ema else self.net
        return draw(denoiser, tuple(self.hparams.model.get("shape") or ()), seeds, batch=len(list(seeds)),
                    sampler_kwargs={**self.hparams.sampler, **overrides}, device=self.device,
                    label_dim=getattr(denoiser, "label_dim", 0)).samples
