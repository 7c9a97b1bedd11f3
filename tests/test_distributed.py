"""Scale-out of training: W processes (ddp_spawn, torchrun) and gradient accumulation train exactly what one process
with the same global batch trains; bf16-mixed keeps D's coefficients and the loss in float32; channels_last and
compile leave the result unchanged; a 2-process run resumes exactly; the launcher configs compose."""
import csv
import math
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import ROOT, TINY, assert_close_by_key, compose, with_overrides
from hydra.core.hydra_config import HydraConfig

from edmlab.training.run import ConfigError, build, check_run_dir, world_size
from edmlab.design.loss import DenoisingLoss
from edmlab.design.loss_weighting import EDMWeighting
from edmlab.design.preconditioning import EDMPrecond
from edmlab.design.training_noise import EDMNoise

# 4 optimizer steps of global batch 32 with full learning rate from step 1 (no ramp-up) and no randomness beyond
# the per-step draws (dropout 0, no augmentation), so that every way of splitting the batch must agree.
pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tiny tensors: one thread each is 5-10× faster
STEPS = 4
BASE = with_overrides([o for o in TINY if not o.startswith("callbacks.")], [
    "callbacks=none", "logger=csv", "trainer.log_every_n_steps=2", "network.model_channels=8", "network.dropout=0",
    "augment=none", "optim.lr_rampup_kimg=0", f"duration_kimg={STEPS * 32 / 1000}"])


class LossTrace(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def fit(tmp_path, extra, name):
    cfg = compose("train", with_overrides(BASE, extra), tmp_path / name)
    trainer, module, datamodule = build(cfg)
    trace = LossTrace()
    trainer.callbacks.append(trace)
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return trainer, module, initial, trace.losses


def logged(run_dir) -> dict:
    """{step: {train/loss, loss_per_sigma/*: value}} from a run's csv/metrics.csv."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return {round(float(r["train/kimg"]) * 1000 / 32): {k: float(v) for k, v in r.items() if v not in ("", "nan") and
                                                          k.startswith(("train/loss", "loss_per_sigma/"))}
            for r in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, the whole batch of 32 at once, fp32, eager: (final state, initial state, per-step losses,
    Adam's state, logged statistics)."""
    tmp_path = tmp_path_factory.mktemp("ref")
    trainer, module, initial, losses = fit(tmp_path, [], "one")
    assert trainer.global_step == STEPS and trainer.accumulate_grad_batches == 1
    return ({k: v.detach().clone() for k, v in module.state_dict().items()}, initial, losses,
            trainer.optimizers[0].state_dict(), logged(tmp_path / "one"))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_reference_run_moves_the_weights_far_beyond_the_tolerance(reference):
    final, initial, losses, _, _ = reference
    assert max_difference(final, initial) > 1e-3
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)


# A checkpoint every 2 steps, kept (epoch=0-step=2.ckpt), and no other callback.
CHECKPOINTS = ["callbacks=default", "callbacks.final_report=null", "callbacks.sample_grid=null",
               "callbacks.checkpoint.every_n_train_steps=2", "callbacks.checkpoint.save_top_k=-1"]


@pytest.fixture(scope="module")
def ddp_accumulated(tmp_path_factory):
    """2 processes × 2 micro-batches of 8, with checkpoints: (trainer, module, run dir)."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    trainer, module, _, _ = fit(tmp_path, ["trainer=ddp_sim", "batch_gpu=8", *CHECKPOINTS], "split")
    return trainer, module, tmp_path / "split"


@pytest.mark.parametrize("extra,world,rounds", [
    (["batch_gpu=16"], 1, 2),                     # 1 process, 2 accumulated micro-batches of 16
    (["trainer=ddp_sim"], 2, 1),                  # 2 processes (gloo) × 16
    (None, 2, 2),                                 # 2 processes × 2 micro-batches of 8 (ddp_accumulated)
])
def test_split_batch_trains_the_same_weights_as_one_process(extra, world, rounds, reference, tmp_path, request):
    """Net, EMA and every buffer equal the one-process run to 1e-5: the same images, σ and noise per step, the
    gradient of the same mean loss (DDP averages over ranks, Lightning divides by the accumulation rounds). The
    logged train/loss and per-σ losses are those of the one-process run: means over micro-batches and ranks."""
    if extra is None:
        trainer, module, run = request.getfixturevalue("ddp_accumulated")
    else:
        (trainer, module, _, _), run = fit(tmp_path, extra, "split"), tmp_path / "split"
    assert (world_size(trainer), trainer.accumulate_grad_batches) == (world, rounds)
    assert max_difference(module.state_dict(), reference[0]) < 1e-5
    split, one = logged(run), reference[4]
    assert sorted(one) == [2, 4] and all("train/loss" in one[step] for step in one)
    assert_close_by_key(split, one, rtol=1e-5, atol=0)


def test_two_processes_resume_exactly(reference, ddp_accumulated, tmp_path):
    """The 2-process run's step-2 checkpoint, resumed for the 2 last steps on 2 processes, gives the one-process
    4-step run's net, EMA and every entry of Adam's state (compared by key): data position and draws continue."""
    step_2 = ddp_accumulated[2] / "checkpoints" / "epoch=0-step=2.ckpt"
    fit(tmp_path, ["trainer=ddp_sim", "batch_gpu=8", *CHECKPOINTS, f"ckpt_path='{step_2}'"], "second")
    state = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == STEPS and state["edmlab"]["run"]["cur_nimg"] == STEPS * 32
    assert max_difference(state["state_dict"], reference[0]) < 1e-5
    (optimizer,) = state["optimizer_states"]
    assert_close_by_key(optimizer, reference[3], rtol=1e-4, atol=1e-6)


def test_torchrun_ranks_share_one_run_dir_and_train_the_one_process_weights(reference, tmp_path):
    """The recommended path: processes from torchrun (TorchElasticEnvironment), each composing its own config;
    +launcher=torchrun gives them one run dir, only rank 0 writes, and the EMA weights are those of one process."""
    args = ["+launcher=torchrun", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            *[o for o in BASE if not o.startswith(("callbacks", "logger", "trainer.accelerator"))],
            "logger=csv", "callbacks.final_report.num_samples=8", "callbacks.sample_grid.every_n_steps=0"]
    env = {**os.environ, "WANDB_MODE": "offline", "EDMLAB_RUN_DIR": str(tmp_path / "run"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(ROOT / "src" / "train.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    run = tmp_path / "run"
    for name in ("config.yaml", "network.pt", "metrics.json", "checkpoints/last.ckpt", "csv/metrics.csv"):
        assert (run / name).is_file(), name
    ema = torch.load(run / "network.pt", map_location="cpu", weights_only=False)["state_dict"]
    expected = {k[len("ema."):]: v for k, v in reference[0].items() if k.startswith("ema.")}
    assert max_difference(ema, expected) < 1e-5


def test_torchrun_with_a_clock_stamped_run_dir_is_refused(monkeypatch, tmp_path):
    cfg = compose("train", [], tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"\+launcher=torchrun"):
        check_run_dir()
    cfg = compose("train", ["+launcher=torchrun"], tmp_path)
    check_run_dir()
    assert cfg.hydra.run.dir == "outputs/train/torchrun_abc"
    monkeypatch.setenv("EDMLAB_RUN_DIR", str(tmp_path / "shared"))
    assert cfg.hydra.run.dir == str(tmp_path / "shared")


def test_global_batch_must_split_over_the_resolved_devices(tmp_path):
    with pytest.raises(ConfigError, match="batch_size=33 is not divisible by the 2 devices"):
        build(compose("train", BASE + ["trainer=ddp_sim", "batch_size=33"], tmp_path))
    with pytest.raises(ConfigError, match="batch_gpu=12 must divide the per-device batch 16"):
        build(compose("train", BASE + ["trainer=ddp_sim", "batch_gpu=12"], tmp_path))
    with pytest.raises(ConfigError, match="compile='yes'"):
        build(compose("train", BASE + ["compile=yes"], tmp_path))


def test_edm_coefficients_and_loss_stay_float32_under_bf16_autocast():
    """D = c_skip·x + c_out·F with a fixed F equals the float64 formula to float32 precision (bf16 would miss by
    ~1e-3), and the loss of that D is the same number inside and outside autocast."""
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.002, 0.05, 0.5, 2.0, 20.0, 80.0])
    G = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    class FixedF(torch.nn.Module):
        label_dim = 0

        def forward(self, x_in, c_noise, class_labels=None, augment_labels=None):
            return G.to(x_in.dtype)

    D = EDMPrecond(FixedF(), sigma_data=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = D(x, sigma)
    s = sigma.double().reshape(-1, 1, 1, 1)
    expected = 0.25 / (s**2 + 0.25) * x.double() + s * 0.5 / (s**2 + 0.25).sqrt() * G.double()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)
    loss = DenoisingLoss(EDMNoise(), EDMWeighting(0.5))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    plain = loss(D, x, sigma=sigma, noise=noise).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(D, x, sigma=sigma, noise=noise).loss
    assert mixed.dtype == torch.float32 and mixed.item() == plain.item()


def test_bf16_mixed_runs_the_raw_network_under_bf16_autocast(reference, tmp_path):
    """F runs under bf16 autocast, D comes out float32, the weights stay float32, and the per-step losses are
    those of the fp32 run to bf16 accuracy."""
    cfg = compose("train", BASE + ["trainer.precision=bf16-mixed"], tmp_path / "bf16")
    trainer, module, datamodule = build(cfg)
    seen = {"F": set(), "D": set()}
    module.net.model.register_forward_pre_hook(
        lambda m, i: seen["F"].add(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))
    module.net.register_forward_hook(lambda m, i, o: seen["D"].add(o.dtype))
    trace = LossTrace()
    trainer.callbacks.append(trace)
    trainer.fit(module, datamodule=datamodule)
    assert seen == {"F": {torch.bfloat16}, "D": {torch.float32}}
    assert len(trace.losses) == STEPS
    for mixed, full in zip(trace.losses, reference[2]):
        assert math.isfinite(mixed) and mixed == pytest.approx(full, rel=2e-2)
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_channels_last_trains_the_same_weights(reference, tmp_path):
    _, module, _, _ = fit(tmp_path, ["channels_last=true"], "cl")
    convs = [p for p in module.net.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert max_difference(module.state_dict(), reference[0]) < 1e-5


def test_compile_keeps_state_dict_keys_and_trains_the_same_weights(reference, tmp_path, monkeypatch):
    """compile=true compiles the raw network in place. Inductor's C++ code generation takes ~70 s for the smallest
    net on the 2-core dev CPU, so here dynamo traces with the aot_eager backend (same graph capture and AOT
    autograd, eager kernels); the inductor path is timed by benchmarks/train_gpu.py."""
    compile_in_place = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kwargs: compile_in_place(self, **{**kwargs, "backend": "aot_eager"}))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    _, module, _, _ = fit(tmp_path, ["compile=true"], "compiled")
    assert module.net.model._compiled_call_impl is not None and module.ema.model._compiled_call_impl is None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert max_difference(module.state_dict(), reference[0]) < 1e-5


def stub_submitit(tmp_path):
    """hydra/launcher/submitit_slurm as the optional hydra-submitit-launcher registers it (a few of its fields)."""
    folder = tmp_path / "stub" / "hydra" / "launcher"
    folder.mkdir(parents=True)
    (folder / "submitit_slurm.yaml").write_text(
        "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher\n"
        "submitit_folder: ${hydra.sweep.dir}/.submitit/%j\ntimeout_min: 60\ncpus_per_task: null\n"
        "gpus_per_node: null\ntasks_per_node: 1\nmem_gb: null\nnodes: 1\npartition: null\n")
    return [f"hydra.searchpath=[file://{tmp_path / 'stub'}]"]


def test_slurm_launcher_asks_one_task_per_gpu_and_the_trainer_follows(tmp_path):
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
        extra = []
    except ImportError:
        extra = stub_submitit(tmp_path)
    cfg = compose("train", ["experiment=cifar10_uncond_ddpmpp", "+launcher=slurm", "hydra.launcher.nodes=2",
                            "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu", *extra], tmp_path)
    HydraConfig().set_config(cfg)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (2, 4, 4, "gpu")
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy, cfg.trainer.accelerator) == \
        (4, 2, "ddp", "gpu")
    assert cfg.trainer.use_distributed_sampler is False and cfg.batch_size == 512


def test_joblib_launcher_composes_a_parallel_sweep(tmp_path):
    cfg = compose("train", ["+launcher=joblib", "hydra.launcher.n_jobs=3"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


@pytest.mark.parametrize("option,expected", [("ddp", ("gpu", -1, "ddp", 1)), ("multinode", ("gpu", -1, "ddp", 2)),
                                             ("ddp_sim", ("cpu", 2, "ddp_spawn", 1))])
def test_trainer_options(option, expected, tmp_path):
    t = compose("train", [f"trainer={option}"], tmp_path).trainer
    assert (t.accelerator, t.devices, t.strategy, t.num_nodes) == expected and t.use_distributed_sampler is False


def test_callbacks_set_by_a_preset_but_absent_from_the_option_are_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="callbacks.checkpoint has no _target_"):
        build(compose("train", ["experiment=cifar10_uncond_ddpmpp", "callbacks=none"], tmp_path))
