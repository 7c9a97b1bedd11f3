"""Training: configs, the EDM training mechanics (LR ramp-up, EMA, reduction), exact resume, export, bad input."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import CONF, TINY, compose, run_script, with_overrides

import edmlab
from omegaconf import OmegaConf
from edmlab.training.callbacks import FinalReport
from edmlab.training.ema import ema_beta
from edmlab.training.run import ConfigError, build, model_spec
from edmlab.evaluation.metrics.for_dataset import dataset_metric

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tiny tensors: one thread is 5-10× faster on shared cores

# What "clearly lower" means after 200 steps of the tiny digits run (measured: see the test).
LOSS_DROP, FD_DROP = 0.5, 0.5

GROUPS = ["preconditioning", "loss_weighting", "noise_distribution", "solver", "discretization", "schedule",
          "scaling", "sampler", "network", "augment", "trainer", "logger", "callbacks"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


class StubData:
    def __init__(self, shape, label_dim):
        self.shape, self.label_dim = shape, label_dim
        self.network_kwargs = (dict(dim=shape[0]) if len(shape) == 1 else
                               dict(img_resolution=shape[-1], in_channels=shape[0], out_channels=shape[0]))


def instantiate_model(cfg):
    """The training module of a config on the meta device (no memory, no data files needed)."""
    from edmlab.training.module import EDMModule
    from omegaconf import OmegaConf

    target = cfg.data.dataset._target_
    shape = {"CIFAR10Dataset": (3, 32, 32), "DigitsDataset": (1, 8, 8), "PointsDataset": (2,)}.get(
        target.rsplit(".", 1)[-1], (3, cfg.data.dataset.get("resolution") or 64, cfg.data.dataset.get("resolution") or 64))
    label_dim = 1000 if "imagenet" in cfg.task_name else (10 if cfg.data.cond else 0)
    container = OmegaConf.to_container(cfg, resolve=False)
    with torch.device("meta"):
        return EDMModule(model=model_spec(cfg, StubData(shape, label_dim)),
                         noise_distribution=OmegaConf.to_container(cfg.noise_distribution, resolve=True),
                         loss_weighting=OmegaConf.to_container(cfg.loss_weighting, resolve=True),
                         augment=OmegaConf.to_container(cfg.augment, resolve=True) if cfg.augment else None,
                         optim=container["optim"], ema=container["ema"],
                         sampler=OmegaConf.to_container(cfg.sampler, resolve=True), batch_size=cfg.batch_size)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_instantiates(group, tmp_path):
    assert options(group), group
    for option in options(group):
        extra = {("network", "mlp"): ["data=mixture"],
                 ("discretization", "custom"): ["sampler.steps=[80,10,1,0.1,0.002]"]}.get((group, option), [])
        cfg = compose("train", [f"{group}={option}", *extra], tmp_path)
        module = instantiate_model(cfg)
        assert module.net.sigma_min < module.net.sigma_max
        edmlab.plan(denoiser=module.net, **OmegaConf.to_container(cfg.sampler, resolve=True))


# Parameter counts of NVlabs/edm's published configurations (edm-nvlabs.md §7.3), preconditioning included.
PRESET_PARAMS = {"cifar10_cond_ddpmpp": 55.74e6, "cifar10_uncond_ddpmpp": 55.73e6, "cifar10_cond_ncsnpp": 56.40e6,
                 "cifar10_uncond_ncsnpp": 56.40e6, "ffhq64_ddpmpp": 61.81e6, "ffhq64_ncsnpp": 62.76e6,
                 "afhqv2_64_ddpmpp": 61.81e6, "afhqv2_64_ncsnpp": 62.76e6, "imagenet64_adm": 295.90e6}


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes_and_instantiates(experiment, tmp_path):
    cfg = compose("train", [f"experiment={experiment}"], tmp_path)
    module = instantiate_model(cfg)
    params = sum(p.numel() for p in module.net.parameters())
    if experiment in PRESET_PARAMS:
        assert round(params / 1e4) == round(PRESET_PARAMS[experiment] / 1e4), params
        assert type(module.net).__name__ == "EDMPrecond" and cfg.optim.lr_rampup_kimg == 10000


# The training runs behind NVlabs/edm's pretrained models: README.md "exact training configurations" table, on top
# of train.py's defaults (--batch=512 --lr=10e-4 --ema=0.5 [Mimg] --dropout=0.13 --augment=0.12 --duration=200
# [Mimg], --fp16=0; --arch ddpmpp/ncsnpp → channel_mult 2,2,2, adm → 1,2,3,4) and training_loop.py's fixed
# lr_rampup_kimg=10000, ema_rampup_ratio=0.05. Config A (Song et al.'s baselines retrained) comes from EDM's
# Table 7, "Baseline" columns: batch 128, lr 2e-4, 0.64 Mimg ramp-up, EMA 0.9999 per step (0.89 Mimg), dropout 0.1,
# 1-2-2-2, no augmentation, fp32.
#   preset:       arch, cond, batch, lr, ema (Mimg), dropout, augment, duration (Mimg), cres, ramp-up (Mimg), fp16
EDM_RUNS = {
    "cifar10_cond_ddpmpp":   ("ddpmpp", True, 512, 1e-3, 0.5, 0.13, 0.12, 200, [2, 2, 2], 10, False),
    "cifar10_cond_ncsnpp":   ("ncsnpp", True, 512, 1e-3, 0.5, 0.13, 0.12, 200, [2, 2, 2], 10, False),
    "cifar10_uncond_ddpmpp": ("ddpmpp", False, 512, 1e-3, 0.5, 0.13, 0.12, 200, [2, 2, 2], 10, False),
    "cifar10_uncond_ncsnpp": ("ncsnpp", False, 512, 1e-3, 0.5, 0.13, 0.12, 200, [2, 2, 2], 10, False),
    "cifar10_uncond_flow":   ("ddpmpp", False, 512, 1e-3, 0.5, 0.13, 0.12, 200, [2, 2, 2], 10, False),  # flow rows
    "ffhq64_ddpmpp":         ("ddpmpp", False, 256, 2e-4, 0.5, 0.05, 0.15, 200, [1, 2, 2, 2], 10, False),
    "ffhq64_ncsnpp":         ("ncsnpp", False, 256, 2e-4, 0.5, 0.05, 0.15, 200, [1, 2, 2, 2], 10, False),
    "afhqv2_64_ddpmpp":      ("ddpmpp", False, 256, 2e-4, 0.5, 0.25, 0.15, 200, [1, 2, 2, 2], 10, False),
    "afhqv2_64_ncsnpp":      ("ncsnpp", False, 256, 2e-4, 0.5, 0.25, 0.15, 200, [1, 2, 2, 2], 10, False),
    "imagenet64_adm":        ("adm", True, 4096, 1e-4, 50, 0.10, 0, 2500, [1, 2, 3, 4], 10, True),
    "config_a_vp":           ("ddpmpp", False, 128, 2e-4, 0.887, 0.10, 0, 200, [1, 2, 2, 2], 0.64, False),
    "config_a_ve":           ("ncsnpp", False, 128, 2e-4, 0.887, 0.10, 0, 200, [1, 2, 2, 2], 0.64, False),
}
ARCH = {"ddpmpp": ("SongUNet", "positional"), "ncsnpp": ("SongUNet", "fourier"), "adm": ("DhariwalUNet", None)}


def test_edm_runs_cover_every_image_preset():
    assert set(EDM_RUNS) == {p for p in options("experiment") if p.startswith(("cifar10_", "ffhq64_", "afhqv2_64_",
                                                                                "imagenet64_", "config_a_"))
                             and not p.endswith("_ect")}


def test_cifar10_ect_preset_is_locuslab_run_ecm(tmp_path):
    """locuslab/ect run_ecm.sh (4311059): batch 128, 200k steps (25.6 Mimg), lr 1e-4, dropout 0.2, no augmentation,
    a stage every 250 ticks of 12.8 kimg (3.2 Mimg), EMA β = 0.9999 per step (half-life 128·ln ½/ln β images),
    ECMLoss defaults P_mean −1.1, P_std 2.0, q 2, k 8, b 1, and 2-step sampling at mid_t 0.821."""
    cfg = compose("train", ["experiment=cifar10_uncond_ect", "init_from=edm.pkl"], tmp_path)
    assert (cfg.batch_size, cfg.duration_kimg, cfg.optim.lr, cfg.network.dropout, cfg.augment) == \
        (128, 25600, 1e-4, 0.2, None)
    assert cfg.objective._target_.endswith("ECTObjective") and cfg.objective.stage_kimg == 12.8 * 250
    assert (cfg.objective.P_mean, cfg.objective.P_std, cfg.objective.q, cfg.objective.k, cfg.objective.b) == \
        (-1.1, 2.0, 2.0, 8.0, 1.0)
    assert cfg.ema.halflife_kimg == pytest.approx(128 * math.log(0.5) / math.log(0.9999) / 1000, abs=0.5)
    assert (cfg.sampler.solver, list(cfg.sampler.steps)) == ("consistency", [80, 0.821, 0.002])
    assert list(cfg.required) == ["init_from"]


@pytest.mark.parametrize("experiment", sorted(EDM_RUNS))
def test_preset_matches_the_edm_run(experiment, tmp_path):
    arch, cond, batch, lr, ema_mimg, dropout, augment, duration_mimg, cres, rampup_mimg, fp16 = EDM_RUNS[experiment]
    cfg = compose("train", [f"experiment={experiment}"], tmp_path)
    network, embedding = ARCH[arch]
    assert cfg.network._target_.rsplit(".", 1)[-1] == network and cfg.network.get("embedding_type") == embedding
    assert (bool(cfg.data.cond), cfg.batch_size, cfg.optim.lr, cfg.network.dropout) == (cond, batch, lr, dropout)
    assert cfg.ema.halflife_kimg == pytest.approx(ema_mimg * 1000, abs=0.5)
    assert cfg.duration_kimg == duration_mimg * 1000 and cfg.optim.lr_rampup_kimg == pytest.approx(rampup_mimg * 1000)
    assert (cfg.augment.p if cfg.augment else 0) == augment and list(cfg.network.channel_mult) == cres
    assert cfg.ema.rampup_ratio == (None if experiment.startswith("config_a_") else 0.05)
    assert cfg.trainer.precision == ("bf16-mixed" if fp16 else "32-true")
    assert cfg.batch_gpu is None and cfg.optim.betas == [0.9, 0.999] and cfg.optim.eps == 1e-8


def test_ema_beta_matches_edm_formula():
    assert ema_beta(512, 10**9, 500) == pytest.approx(0.5 ** (512 / 500_000))
    assert ema_beta(512, 10**9, 500) == pytest.approx(0.99929, abs=1e-5)
    assert ema_beta(512, 20_000, 500, 0.05) == pytest.approx(0.5 ** (512 / 1000))
    assert ema_beta(512, 0, 500, 0.05) == 0.0
    assert ema_beta(512, 0, 500, None) == pytest.approx(0.5 ** (512 / 500_000))


def fit(tmp_path, overrides, name="run"):
    if "callbacks=none" in overrides:
        overrides = [o for o in overrides if not o.startswith("callbacks.")]
    cfg = compose("train", overrides, tmp_path / name)
    trainer, module, datamodule = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return trainer, module


def test_learning_rate_ramp_and_ema_follow_edm(tmp_path, tiny):
    """After k steps: lr = lr₀·min(k·B/rampup, 1), and the EMA equals the recursion run by hand on the weights."""
    captured = []
    from edmlab.training.module import EDMModule

    original = EDMModule.optimizer_step

    def spy(self, *args, **kwargs):
        before = [p.detach().clone() for p in self.ema.parameters()]
        original(self, *args, **kwargs)
        captured.append((self.cur_nimg, self.optimizers().param_groups[0]["lr"], before,
                         [p.detach().clone() for p in self.net.parameters()],
                         [p.detach().clone() for p in self.ema.parameters()]))

    EDMModule.optimizer_step = spy
    try:
        fit(tmp_path, tiny + ["duration_kimg=0.192", "optim.lr_rampup_kimg=0.1", "ema.halflife_kimg=0.05",
                              "callbacks=none"])
    finally:
        EDMModule.optimizer_step = original
    assert len(captured) == 6
    for k, (nimg_after, lr, ema_before, net, ema_after) in enumerate(captured):
        assert lr == pytest.approx(2e-3 * min(k * 32 / 100, 1))
        beta = 0.5 ** (32 / max(min(50, 0.05 * k * 32), 1e-8))
        for e0, p, e1 in zip(ema_before, net, ema_after):
            torch.testing.assert_close(e1, beta * e0 + (1 - beta) * p, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["vp", "ve", "iddpm", "edm"])
def test_each_preconditioning_lowers_the_loss_and_the_fd(variant, tmp_path, tiny):
    """200 steps must clearly lower, from the initial network's, the loss on a fixed held-out batch (fixed σ and
    noise) and the digits FD of 64 samples (same seeds): a sign error in D, the loss or the update fails here,
    where a finite loss would pass."""
    loss = {"iddpm": "vp"}.get(variant, variant)
    tiny = [o for o in tiny if not o.startswith("callbacks.")]
    cfg = compose("train", with_overrides(tiny, [f"preconditioning={variant}", f"loss_weighting={loss}",
                                                 f"noise_distribution={loss}", "duration_kimg=6.4", "callbacks=none",
                                                 "optim.lr_rampup_kimg=1", "sampler.num_steps=12"]), tmp_path / "run")
    trainer, module, datamodule = build(cfg)
    g = torch.Generator().manual_seed(0)
    images = datamodule.val_images(128)
    sigma = module.loss_fn.noise_distribution.sample(128, generator=g)
    noise = torch.randn(images.shape, generator=g)
    scorer = dataset_metric(datamodule.dataset)

    def measure():
        module.eval()
        with torch.no_grad():
            value = module.loss_fn(module.net, images, sigma=sigma, noise=noise).loss.item()
        scores = scorer(module.generate(range(64)).float())
        return value, scores[next(k for k in scores if k.endswith("fd"))]

    loss_before, fd_before = measure()
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 200
    loss_after, fd_after = measure()
    assert loss_after < LOSS_DROP * loss_before and fd_after < FD_DROP * fd_before, \
        (loss_before, loss_after, fd_before, fd_after)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits run of 4 steps with its checkpoint, network.pt and final report: (run dir, trainer, module)."""
    tmp_path = tmp_path_factory.mktemp("trained")
    trainer, module = fit(tmp_path, TINY + ["duration_kimg=0.128", "callbacks=default",
                                            "callbacks.final_report.num_samples=8"])
    return tmp_path / "run", trainer, module


def test_export_and_load_give_the_ema_denoiser(trained):
    run, _, module = trained
    x, sigma = torch.randn(4, 1, 8, 8), torch.tensor([0.1, 1.0, 5.0, 30.0])
    expected = module.ema(x, sigma)
    for path in (run / "network.pt", run / "checkpoints" / "last.ckpt", run):
        denoiser = edmlab.load(path)
        torch.testing.assert_close(denoiser(x, sigma), expected)
    samples = edmlab.sample(edmlab.load(run), torch.randn(3, 1, 8, 8), num_steps=4)
    assert samples.shape == (3, 1, 8, 8) and torch.isfinite(samples).all()


def test_final_report_draws_in_batches_the_images_of_one_batch(trained):
    """batch=3 calls the network on 3, 3, 1 images per step and gives the images of one batch of 7 (same seeds)."""
    run, _, module = trained
    sizes = []
    hook = module.ema.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        small = FinalReport(run, num_samples=7, batch=3).draw(module, 7)
        small_sizes, sizes[:] = sorted(set(sizes)), []
        whole = FinalReport(run, num_samples=7, batch=7).draw(module, 7)
    finally:
        hook.remove()
    assert small_sizes == [1, 3] and set(sizes) == {7} and small.shape == (7, 1, 8, 8)
    torch.testing.assert_close(small, whole, rtol=0, atol=1e-6)


def test_final_report_without_a_metric_draws_only_the_grid(trained, tmp_path, monkeypatch):
    """A data set without a metric (CIFAR-10, image folders): the report draws only the grid_images it shows."""
    import edmlab.training.callbacks as callbacks

    _, trainer, module = trained
    monkeypatch.setattr(callbacks, "dataset_metric", lambda dataset: None)
    report = FinalReport(tmp_path, num_samples=10_000, grid_images=5, batch=4)
    counts = []
    monkeypatch.setattr(report, "draw", lambda module, count: counts.append(count) or torch.zeros(count, 1, 8, 8))
    report.on_train_end(trainer, module)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert counts == [5] and metrics["num_samples"] == 5 and metrics["train_loss"] == module.step_loss


def test_logged_loss_is_the_step_mean_and_the_bins_the_per_sigma_means(tmp_path, tiny, monkeypatch):
    """Under accumulation (2 micro-batches of 16), train/loss is the per-pixel mean of λ(σ)·(D − y)² over the 32
    images of the logged step (NVlabs' Loss/loss), loss_per_sigma/* the per-bin means over the steps since the last
    log, and the final report's train_loss the last step's mean: recomputed here from D's inputs and outputs."""
    from edmlab.training.module import EDMModule

    seen = []  # (global step, y, σ, D) per micro-batch
    original = EDMModule.training_step

    def spy(self, batch, batch_idx):
        record = lambda m, args, out: seen.append((self.trainer.global_step, batch[0], args[1], out.detach()))
        hook = self.net.register_forward_hook(record)
        try:
            return original(self, batch, batch_idx)
        finally:
            hook.remove()

    monkeypatch.setattr(EDMModule, "training_step", spy)
    fit(tmp_path, with_overrides(tiny, ["batch_gpu=16", "trainer.log_every_n_steps=2", "duration_kimg=0.128",
                                        "callbacks.final_report.num_samples=8"]))
    assert [step for step, *_ in seen] == [0, 0, 1, 1, 2, 2, 3, 3]
    steps, losses, sigmas = [], [], []
    for step, y, sigma, D in seen:
        s = sigma.double().reshape(-1, 1, 1, 1)
        weight = (s**2 + 0.25) / (s * 0.5) ** 2                                      # EDM's λ(σ), σ_data = 0.5
        losses.append((weight * (D.double() - y.double()) ** 2).mean(dim=(1, 2, 3)))  # per-pixel mean per image
        sigmas.append(sigma.double())
        steps.append(torch.full(sigma.shape, step))
    steps, losses, sigmas = torch.cat(steps), torch.cat(losses), torch.cat(sigmas)
    edges = [0.0, *np.logspace(np.log10(0.002), np.log10(80.0), 9), math.inf]
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = {round(float(r["train/kimg"]) * 1000 / 32): r for r in csv.DictReader(f) if r.get("train/loss")}
    assert sorted(rows) == [2, 4]
    for logged_step, row in rows.items():
        assert float(row["train/loss"]) == pytest.approx(losses[steps == logged_step - 1].mean().item(), rel=1e-5)
        since = (steps >= logged_step - 2) & (steps < logged_step)
        expected = {f"loss_per_sigma/{lo:.3g}-{hi:.3g}": losses[since & (sigmas > lo) & (sigmas <= hi)]
                    for lo, hi in zip(edges[:-1], edges[1:])}
        logged = {k: float(v) for k, v in row.items() if k.startswith("loss_per_sigma/") and v not in ("", "nan")}
        assert logged.keys() == {k for k, v in expected.items() if len(v)}
        for k, value in logged.items():
            assert value == pytest.approx(expected[k].mean().item(), rel=1e-5), k
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_loss"] == pytest.approx(losses[steps == 3].mean().item(), rel=1e-5)


def test_loss_per_sigma_is_logged(tmp_path, tiny):
    fit(tmp_path, tiny + ["duration_kimg=0.64", "callbacks=none"])
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    bins = [c for c in header.split(",") if c.startswith("loss_per_sigma/")]
    assert len(bins) >= 5 and "train/lr" in header and "train/kimg" in header


@pytest.mark.parametrize("overrides,match", [
    (["batch_size=-4"], "batch_size=-4"), (["noise_distribution.P_std=0"], "P_std"),
    (["augment=edm", "augment.p=1.5"], r"p is a probability in \[0, 1\], got p=1.5"),
    (["optim.lr=0"], "optim.lr=0"), (["sigma_data=-1"], "sigma_data=-1"),
    (["callbacks.final_report.batch=0"], "callbacks.final_report.batch=0 must be an integer >= 1"),
    (["callbacks.sample_grid.num_images=0"], "callbacks.sample_grid.num_images=0 must be an integer >= 1")])
def test_bad_config_values_fail_before_training(overrides, match, tmp_path, tiny):
    with pytest.raises(ValueError, match=match):
        fit(tmp_path, tiny + overrides)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("override,match", [("sampler.rho=-1", "rho=-1"), ("sampler.alpha=0", "alpha=0"),
                                            ("sampler.num_steps=0", "num_steps=0")])
def test_a_bad_sampler_value_fails_before_anything_is_written(override, match, tmp_path, tiny):
    """The sampler is used only by the sample grids and the final report, at the end: it is dry-run at build."""
    with pytest.raises(ConfigError, match=match):
        fit(tmp_path, tiny + [override])
    assert not (tmp_path / "run").exists()


def test_network_that_does_not_fit_the_data(tmp_path, tiny):
    with pytest.raises(ValueError, match="network=mlp for points"):
        fit(tmp_path, tiny[2:] + ["network=mlp"])


def test_missing_data_path_is_a_clear_error(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="nope"):
        fit(tmp_path, tiny + ["data=image_folder", f"data.dataset.path={tmp_path / 'nope'}"])


def test_train_script_end_to_end_with_wandb_offline(tmp_path):
    """The real entry point: outputs/train/<time>/ with checkpoint, network, samples.png, metrics.json, config,
    and an offline W&B run (a log row every 2 of the 4 steps: W&B joins a run that logs a curve); a typo'd key
    fails at compose time."""
    args = ["network.model_channels=16", "network.channel_mult=[1,2]", "batch_size=32", "duration_kimg=0.128",
            "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=2", "callbacks.final_report.num_samples=32",
            "sampler.num_steps=4"]
    result = run_script("train.py", args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = list((tmp_path / "outputs" / "train").iterdir())
    for name in ("checkpoints/last.ckpt", "network.pt", "samples.png", "metrics.json", "config.yaml", "csv/metrics.csv"):
        assert (run / name).is_file(), name
    assert list((run / "wandb").glob("offline-run-*")), list(run.iterdir())
    bad = run_script("train.py", ["sampler.rhoo=3"], tmp_path)
    assert bad.returncode != 0 and "rhoo" in bad.stderr
    bad = run_script("train.py", ["batch_size=0"], tmp_path)
    assert bad.returncode == 2 and "batch_size=0" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_script("train.py", ["sampler.rho=-1", "hydra.run.dir=bad"], tmp_path)
    assert bad.returncode == 2 and "rho=-1" in bad.stderr and "Traceback" not in bad.stderr
    assert not [p for p in (tmp_path / "bad").rglob("*") if p.suffix in (".ckpt", ".pt", ".json", ".png")]


def test_a_failing_job_of_a_training_sweep_is_recorded_and_the_others_run(tmp_path):
    """optim.lr=-1,0.002: job 0 is refused; its dir keeps a failure record naming optim.lr, job 1 trains and
    writes its metrics, the sweep report lists the failure, and the process exits 1."""
    sweep = tmp_path / "sweep"
    args = with_overrides(TINY, ["logger=none", "duration_kimg=0.064", "callbacks.final_report.num_samples=8",
                                 "sampler.num_steps=3", "optim.lr=-1,0.002"])
    result = run_script("train.py", ["-m", *args, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    (failed,), (trained,) = sweep.glob("0_*"), sweep.glob("1_*")
    record = json.loads((failed / "metrics.json").read_text())
    assert (record["status"], record["job_num"]) == ("failed", 0) and "optim.lr=-1" in record["error"]
    assert "optim.lr=-1" in record["overrides"] and (failed / ".hydra" / "overrides.yaml").is_file()
    assert json.loads((trained / "metrics.json").read_text()).get("status", "ok") == "ok"
    assert (trained / "network.pt").is_file()
    with open(sweep / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["optim.lr"], r["status"]) for r in rows] == [("-1", "failed"), ("0.002", "ok")]
    assert "(2 jobs, 1 failed)" in result.stdout
    assert "error: job 0 (" in result.stderr and "Traceback" not in result.stderr


def test_a_refused_run_leaves_no_run_dir_and_keeps_a_dir_with_other_files(tmp_path):
    """A refused single run exits 2 with one line; the dir Hydra made for it goes, unless it holds more than
    Hydra's own files (here a resumed run's checkpoint)."""
    bad = run_script("train.py", ["optim.lr=-1"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("error: optim.lr=-1") and not (tmp_path / "outputs").exists()
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    (resumed / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    bad = run_script("train.py", ["optim.lr=-1", f"hydra.run.dir={resumed}"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert (resumed / "checkpoints" / "last.ckpt").read_bytes() == b"weights" and (resumed / ".hydra").is_dir()
