"""What the Lightning training loop costs: images/s of ``EDMModule`` under ``lightning.Trainer`` against a bare
PyTorch loop doing the same training math with the same network, batch and loss.

Both train the digits_small SongUNet in EDMPrecond on the 8×8 digits at batch 128 (CPU, one process) with the EDM
loss (Eq. 8; σ and noise drawn per step from a generator seeded by the step), gradients through nan_to_num, Adam
with the LR ramp-up, and the EMA update; the data come from the same EDMDataModule loader. The Lightning run adds
only what the framework does around it (hooks, the loss-per-σ bins, ``self.log``); logger, callbacks and progress
bar are off. Each loop runs ``--warmup`` steps untimed, then ``--steps`` timed steps; the two alternate for
``--rounds`` rounds and the best round of each counts, so a burst of load from other processes hurts less.

    python benchmarks/train_throughput.py [--steps 40] [--warmup 5] [--rounds 2] [--batch 128] [--threads N]
"""
import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from edmlab.io.network_file import build_denoiser
from edmlab.training.ema import ema_beta, ema_update
from edmlab.training.run import build

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(batch: int, steps: int, output_dir: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[
            "data=digits", "network=digits_small", "augment=none", f"batch_size={batch}", "trainer=cpu",
            f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "+trainer.enable_checkpointing=false", "callbacks=none", "logger=none", f"paths.output_dir={output_dir}"])


class StepTimer(L.Callback):
    """Wall time from the start of optimizer step ``first`` to the end of the last step."""

    def __init__(self, first: int):
        self.first, self.start, self.end = first, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.first and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def lightning_loop(cfg, warmup: int) -> float:
    trainer, module, datamodule = build(cfg)
    timer = StepTimer(warmup)
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=datamodule)
    return (trainer.global_step - warmup) * cfg.batch_size / (timer.end - timer.start)


def bare_loop(cfg, warmup: int) -> float:
    _, module, datamodule = build(cfg)
    net = build_denoiser(module.hparams.model).train()
    ema = build_denoiser(module.hparams.model).eval().requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    loss_fn, batch, seed = module.loss_fn, cfg.batch_size, cfg.seed
    o, e = cfg.optim, cfg.ema
    optimizer = torch.optim.Adam(net.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    loader = iter(datamodule.train_dataloader())
    total = cfg.trainer.max_steps
    start = None
    for step in range(total):
        if step == warmup:
            start = time.perf_counter()
        images, _ = next(loader)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        sigma = loss_fn.noise_distribution.sample(batch, generator=g)
        noise = torch.randn(images.shape, generator=g)
        out = loss_fn(net, images, None, None, sigma=sigma, noise=noise)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        for p in net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        cur_nimg = step * batch
        for group in optimizer.param_groups:
            group["lr"] = o.lr * min(cur_nimg / max(o.lr_rampup_kimg * 1000, 1e-8), 1)
        optimizer.step()
        ema_update(ema, net, ema_beta(batch, cur_nimg, e.halflife_kimg, e.rampup_ratio))
    return (total - warmup) * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if min(args.steps, args.rounds, args.batch) < 1 or args.warmup < 0:
        parser.error("--steps, --rounds and --batch must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(args.batch, args.warmup + args.steps, tmp)
        results = {"lightning": [], "bare": []}
        for _ in range(args.rounds):
            results["lightning"].append(lightning_loop(cfg, args.warmup))
            results["bare"].append(bare_loop(cfg, args.warmup))
    best = {k: max(v) for k, v in results.items()}
    print(f"training throughput, digits_small on 8x8 digits, batch {args.batch}, CPU, {torch.get_num_threads()} "
          f"threads, {args.steps} timed steps, best of {args.rounds} rounds")
    print(f"{'loop':<10} {'images/s':>10}   rounds")
    for k, v in results.items():
        print(f"{k:<10} {best[k]:>10.1f}   " + " ".join(f"{x:.1f}" for x in v))
    print(f"ratio lightning / bare = {best['lightning'] / best['bare']:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
