"""GPU speed of the CIFAR-10 DDPM++ preset (experiment=cifar10_uncond_ddpmpp: SongUNet 55.7 M parameters in
EDMPrecond, 32×32×3, EDM augmentation p = 0.12) under our Lightning loop, on one GPU:

- training images/s at ``--batch`` images per step for fp32 (32-true), bf16-mixed, and bf16-mixed with
  channels_last and compile (nn.Module.compile of the raw network, inductor);
- sampling time of ``--sample-batch`` images with the preset's sampler (deterministic Heun, 18 steps = 35 NFE,
  float64 updates, float32 network) from the EMA weights.

Synthetic images stand in for CIFAR-10 (speed does not depend on the pixels). Each variant trains ``--warmup``
untimed steps (compilation happens there) and ``--steps`` timed ones, synchronised at both ends; logger,
callbacks and progress bar are off. One table at the end. Without CUDA it says so and exits (status 0, so that
``make bench`` goes on); ``--cpu`` runs it anyway as a smoke test of the script (numbers meaningless).

    python benchmarks/train_gpu.py [--batch 128] [--steps 50] [--warmup 15] [--sample-batch 256]
                                   [--variants fp32,bf16,bf16+cl+compile]
"""
import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from edmlab.training.run import build

CONF = Path(__file__).resolve().parents[1] / "conf"
VARIANTS = {"fp32": ["trainer.precision=32-true"],
            "bf16": ["trainer.precision=bf16-mixed"],
            "bf16+cl+compile": ["trainer.precision=bf16-mixed", "channels_last=true", "compile=true"]}


class SyntheticImages(torch.utils.data.Dataset):
    """``n`` fixed random images in [−1, 1] of ``shape``, unlabelled: a CIFAR-10 stand-in with its shape."""

    def __init__(self, n: int = 4096, shape=(3, 32, 32), seed: int = 0):
        self.images = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        self.shape, self.num_classes = tuple(shape), 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], 0


class StepTimer(L.Callback):
    def __init__(self, first: int):
        self.first, self.start, self.end = first, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.first and self.start is None:
            _sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == trainer.max_steps:
            _sync()
            self.end = time.perf_counter()


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def config(args, variant: str, output_dir: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=cifar10_uncond_ddpmpp", f"batch_size={args.batch}", "batch_gpu=null",
            "trainer=cpu" if args.cpu else "trainer=gpu", f"trainer.max_steps={args.warmup + args.steps}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "+trainer.enable_checkpointing=false", "callbacks=none", "logger=none", f"paths.output_dir={output_dir}",
            "data.num_workers=2", *VARIANTS[variant]])
    with open_dict(cfg):
        cfg.callbacks = None
        cfg.data.dataset = {"_target_": f"{__name__}.SyntheticImages", "n": 4096, "shape": [3, 32, 32]}
    return cfg


def train_speed(args, variant: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer, module, datamodule = build(config(args, variant, tmp))
        timer = StepTimer(args.warmup)
        trainer.callbacks.append(timer)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        total = time.perf_counter() - t0
    seconds = timer.end - timer.start
    return {"images_per_sec": args.steps * args.batch / seconds, "ms_per_step": 1000 * seconds / args.steps,
            "warmup_sec": total - seconds,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
            "module": module}


def sample_speed(args, module) -> float:
    module.to("cuda" if torch.cuda.is_available() else "cpu").eval()  # Lightning hands the module back on the CPU
    seeds = range(args.sample_batch)
    module.generate(range(min(args.sample_batch, 8)))
    _sync()
    t0 = time.perf_counter()
    images = module.generate(seeds)
    _sync()
    assert images.shape == (args.sample_batch, 3, 32, 32) and torch.isfinite(images).all()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128, help="images per training step (one GPU)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cpu", action="store_true", help="run without CUDA (smoke test of this script only)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if not torch.cuda.is_available() and not args.cpu:
        print("benchmarks/train_gpu.py: no CUDA device here; skipped (run it on a GPU machine, or --cpu to smoke-test)")
        return
    rows = []
    module = None
    for variant in variants:
        result = train_speed(args, variant)
        module = result.pop("module")
        rows.append((variant, result))
        print(f"{variant}: {result['images_per_sec']:.0f} images/s", flush=True)
    sample_sec = sample_speed(args, module)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke test)"
    print(f"\nCIFAR-10 DDPM++ (55.7M params, 32x32x3), one {device}, batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps, torch {torch.__version__}, TF32 "
          f"matmul={torch.backends.cuda.matmul.allow_tf32} cudnn={torch.backends.cudnn.allow_tf32}")
    print(f"{'training':<18} {'images/s':>9} {'ms/step':>8} {'warm-up s':>9} {'peak GiB':>8}")
    for variant, r in rows:
        print(f"{variant:<18} {r['images_per_sec']:>9.0f} {r['ms_per_step']:>8.1f} {r['warmup_sec']:>9.1f} "
              f"{r['peak_gib']:>8.2f}")
    print(f"sampling: {args.sample_batch} images, Heun 18 steps (35 NFE), EMA net of the last variant: "
          f"{sample_sec:.2f} s = {args.sample_batch / sample_sec:.0f} images/s")


if __name__ == "__main__":
    main()
