import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# A small but real configuration so that a training step takes milliseconds on a CPU.
TINY = ["network.model_channels=16", "network.channel_mult=[1,2]", "batch_size=32", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=5",
        "callbacks.final_report.num_samples=64", "callbacks.sample_grid.every_n_steps=0", "logger=csv",
        "sampler.num_steps=6"]


# Modules whose tests compare float results with closed forms, transcriptions or other libraries at tight
# tolerances: .ci/run runs them a second time on torch's portable kernels (ATEN_CPU_CAPABILITY=default), which
# round as another CPU's would, so a tolerance below the spread across CPUs fails in CI rather than on a user's
# machine.
NUMERICS = {"test_dinov2", "test_edm2_net", "test_fid", "test_guidance", "test_loss_weighting", "test_metrics",
            "test_nets", "test_preconditioning", "test_sampler", "test_schedules", "test_solvers_multistep",
            "test_augment", "test_lr_schedules", "test_viz", "test_phema", "test_nvlabs_pickle", "test_eval",
            "test_likelihood", "test_flow_matching", "test_solvers_sde", "test_solver_records", "test_consistency"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in NUMERICS:
            item.add_marker(pytest.mark.numerics)


def compose(config_name: str, overrides: list[str], output_dir: Path):
    """A composed config as @hydra.main would give it, with its ${hydra:...} resolvers set and output_dir fixed."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def run_script(script: str, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run src/<script> as a user would, from ``cwd`` (outputs/ lands there)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, str(ROOT / "src" / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def with_overrides(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with each ``key=value`` of ``extra`` replacing the same key (Hydra refuses a group given twice)."""
    keys = {o.split("=", 1)[0] for o in extra}
    return [o for o in base if o.split("=", 1)[0] not in keys] + list(extra)


def train_tiny_run(cwd: Path, *overrides: str) -> Path:
    """A tiny digits run trained by the real entry point from ``cwd``: its run directory."""
    args = with_overrides(TINY, ["logger=none", f"hydra.run.dir={cwd / 'run'}", *overrides])
    result = run_script("train.py", args, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "run"


def assert_close_by_key(a, b, where="", **tolerance):
    """Nested dicts/lists of tensors and numbers (state dicts, optimizer states): the same keys (a missing or extra
    entry fails), and values equal within ``tolerance`` (rtol, atol; 0, 0 for bit-exact)."""
    import torch

    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, set(a) ^ set(b))
        for key in a:
            assert_close_by_key(a[key], b[key], f"{where}[{key!r}]", **tolerance)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_by_key(x, y, f"{where}[{i}]", **tolerance)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, msg=lambda m: f"{where}: {m}", **tolerance)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=tolerance["rtol"], abs=tolerance["atol"]), (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.fixture
def tiny():
    return list(TINY)


@pytest.fixture(scope="module")
def one_cpu_thread():
    """The test machine's few cores are shared: intra-op threads then only wait on each other (tiny tensors run
    5-25× slower with two threads than with one), in this process and in the scripts it starts (as torchrun gives
    each of its workers one thread)."""
    from edmlab.infra.threads import num_threads

    with num_threads(1), pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
