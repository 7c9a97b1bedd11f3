"""What `make train` should train: digits FD (and its ratio to the real-data floor at the same N) against wall-clock
training time on this machine, for the default digits recipe and alternatives, each run alone.

Three parts, each printing a table:

    python benchmarks/digits_recipe.py profile [--recipe NAME] [--steps 30]   # where a training step's time goes
    python benchmarks/digits_recipe.py speed [--steps 60]                     # img/s of the speed options
    python benchmarks/digits_recipe.py search [--recipe NAME ...] [--seeds 0 1] [--out DIR]

``search`` runs ``src/train.py`` once per (recipe, seed), one after the other (two torch processes on two cores
slow each other ~10×), and reads each run's metrics.json: the final report's digits FD of 297 samples against the
297 held-out digits, the floor (297 training digits against the same split), precision/recall and near copies.
``train_sec`` is the training loop's own time (no start-up, no final report); ``wall_sec`` the whole command's.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each recipe: overrides of src/train.py. The EMA length of an ema=power run is then free (EDM2's post-hoc EMA):
#   python src/eval.py -m ckpt=<run dir> num_samples=297 ema.std=0.05,0.1,0.15,0.2,0.25 [ema.at_kimg=500]
RECIPES = {
    "old_default": [],                                                   # conf/train.yaml: EDM, half-life EMA 20 kimg
    "power_ema": ["ema=power"],                                          # + EDM2's power EMA (post-hoc lengths)
    "learned": ["ema=power", "loss_weighting=learned"],                  # + EDM2's learned λ(σ)/e^u + u
    "learned_decay": ["ema=power", "loss_weighting=learned", "lr_schedule=edm2", "optim.lr=4e-3",
                      "lr_schedule.ref_kimg=100"],                       # + lr 4e-3/√(t/100 kimg)
    "new_default": ["experiment=digits"],                                # learned_decay, EMA σ_rel 0.25 tracked
    "new_default_650k": ["experiment=digits", "duration_kimg=650"],
    "new_default_ptrain_edm2": ["experiment=digits", "noise_distribution.P_mean=-0.8", "noise_distribution.P_std=1.6"],
    "new_default_wide48_300k": ["experiment=digits", "network.model_channels=48", "duration_kimg=300"],
}
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv",
         "callbacks.sample_grid.every_n_steps=0"]


def run_recipe(name: str, seed: int, out: Path) -> dict:
    run_dir = out / f"{name}_seed{seed}"
    args = [*RECIPES[name], *QUIET, f"seed={seed}", f"data.seed={seed}", f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "src" / "train.py"), *args], cwd=out, capture_output=True,
                            text=True, env={**os.environ, "WANDB_MODE": "offline"})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        return {"recipe": name, "seed": seed, "error": result.stderr.strip().splitlines()[-1:]}
    m = json.loads((run_dir / "metrics.json").read_text())
    floor = m["floor"]
    return {"recipe": name, "seed": seed, "kimg": m["kimg"], "train_sec": m["train_sec"], "wall_sec": wall,
            "img_per_sec": m.get("images_per_sec"), "fd": m["digits_fd"], "floor": floor["digits_fd"],
            "ratio": m["digits_fd"] / floor["digits_fd"], "precision": m["digits_precision"],
            "recall": m["digits_recall"], "near_copies": m["digits_near_copy_fraction"], "dir": str(run_dir)}


def search(args):
    out = Path(args.out or tempfile.mkdtemp(prefix="digits_recipe_"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"| recipe | seed | kimg | train s | wall s | img/s | digits FD | floor | FD / floor | precision | recall "
          f"| near copies |\n|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in args.recipe or list(RECIPES):
        for seed in args.seeds:
            r = run_recipe(name, seed, out)
            rows.append(r)
            if "error" in r:
                print(f"| {name} | {seed} | failed: {r['error']} |", flush=True)
                continue
            print(f"| {name} | {seed} | {r['kimg']:.0f} | {r['train_sec']:.0f} | {r['wall_sec']:.0f} | "
                  f"{r['img_per_sec']:.0f} | {r['fd']:.2f} | {r['floor']:.2f} | {r['ratio']:.3f} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} | {r['near_copies']:.3f} |", flush=True)
    (out / "recipes.json").write_text(json.dumps(rows, indent=2))
    print(f"runs in {out}")


def _module(overrides, output_dir):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from edmlab.training.run import build

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "logger=none", "callbacks=none"], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return build(cfg)


def training_steps(module, datamodule, steps: int, profiler=None):
    """``steps`` optimizer steps of the module's own loss, Adam, nan_to_num and EMA update, outside Lightning's
    loop (whose own cost benchmarks/train_throughput.py measures); returns images/s."""
    import torch

    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    net, loss_fn, batch = module.net.train(), module.loss_fn, module.batch_size
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    start = time.perf_counter()
    for step in range(steps):
        with torch.profiler.record_function("data"):
            images, _ = next(loader)
            g = torch.Generator().manual_seed(step)
            sigma = loss_fn.noise_distribution.sample(batch, generator=g)
            noise = torch.randn(images.shape, generator=g)
        with torch.profiler.record_function("forward"):
            out = loss_fn(net, images, None, module.augment_pipe, sigma=sigma, noise=noise)
        with torch.profiler.record_function("backward"):
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
        with torch.profiler.record_function("optimizer"):
            for p in net.parameters():
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            optimizer.step()
        with torch.profiler.record_function("ema"):
            module.ema_tracker.update(step * batch, batch)
        if profiler is not None:
            profiler.step()
    return steps * batch / (time.perf_counter() - start)


def profile(args):
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with tempfile.TemporaryDirectory() as tmp:
        _, module, datamodule = _module(RECIPES[args.recipe], tmp)
        training_steps(module, datamodule, 5)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            rate = training_steps(module, datamodule, args.steps)
    print(f"recipe {args.recipe}: {rate:.0f} img/s under the profiler, {torch.get_num_threads()} threads, "
          f"{args.steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    sections = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key in
                ("data", "forward", "backward", "optimizer", "ema")}
    total = sum(sections.values())
    print("| section | share of the step |\n|---|---|")
    for key, t in sections.items():
        print(f"| {key} | {100 * t / total:.1f}% |")


def speed(args):
    import torch

    variants = {"default (2 threads)": ([], 2), "1 thread": ([], 1), "channels_last": (["channels_last=true"], 2),
                "batch 256": (["batch_size=256"], 2), "width 48": (["network.model_channels=48"], 2),
                "width 24": (["network.model_channels=24"], 2)}
    print(f"| variant | img/s ({args.steps} steps after 5 warm-up) |\n|---|---|")
    for name, (overrides, threads) in variants.items():
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as tmp:
            _, module, datamodule = _module(overrides, tmp)
            training_steps(module, datamodule, 5)
            rate = training_steps(module, datamodule, args.steps)
        print(f"| {name} | {rate:.0f} |", flush=True)
    torch.set_num_threads(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("profile", help="torch.profiler table of training steps")
    p.add_argument("--recipe", default="old_default", choices=sorted(RECIPES))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rows", type=int, default=15)
    s = sub.add_parser("speed", help="img/s of the speed options")
    s.add_argument("--steps", type=int, default=60)
    q = sub.add_parser("search", help="train each recipe and score it")
    q.add_argument("--recipe", nargs="*", choices=sorted(RECIPES))
    q.add_argument("--seeds", type=int, nargs="+", default=[0])
    q.add_argument("--out", default=None)
    args = parser.parse_args()
    {"profile": profile, "speed": speed, "search": search}[args.part](args)


if __name__ == "__main__":
    main()
