"""Consistency training runs through the real entry points (tiny digits networks): ECT and sCM tuning a denoising run,
eval at 1 step, a bit-exact resume of an iCT run, and the one-line refusals of runs that cannot be trained or sampled,
before anything is written."""
import pytest
import torch
from conftest import TINY, assert_close_by_key, compose, run_script, train_tiny_run, with_overrides

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

ECT = ["objective=ect", "objective.stage_kimg=0.064", "solver=consistency", "sampler.num_steps=null", "sampler.nfe=2",
       "callbacks.final_report.num_samples=16"]


@pytest.fixture(scope="module")
def denoising_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("edm"), "duration_kimg=0.064")


def test_ect_tunes_a_denoising_run_into_a_consistency_model(denoising_run, tmp_path):
    """init_from a denoising run; the network file records boundary_sigma, and its one-step samples are f(80·z)."""
    import json

    from edmlab.io.network_file import load

    run = train_tiny_run(tmp_path, "duration_kimg=0.128", f"init_from={denoising_run}", *ECT)
    net = load(run / "network.pt")
    assert net.boundary_sigma == 0.002 and net.model_spec["preconditioning"]["boundary_sigma"] == 0.002
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["nfe"] == 2 and metrics["num_samples"] == 16
    result = run_script("eval.py", [f"ckpt={run}", "solver=consistency", "sampler.num_steps=null", "sampler.nfe=1", "num_samples=8",
                                    "logger=none", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["nfe"] == 1


def test_scm_tunes_a_denoising_run(denoising_run, tmp_path):
    from edmlab.io.network_file import load

    run = train_tiny_run(tmp_path, "duration_kimg=0.064", f"init_from={denoising_run}", "objective=scm",
                         "objective.warmup_kimg=0.032", "solver=consistency", "sampler.num_steps=null",
                         "sampler.nfe=1", "callbacks.final_report.num_samples=16")
    assert load(run / "network.pt").boundary_sigma == 0.0


def test_a_consistency_run_resumes_bit_for_bit(tmp_path):
    from edmlab.training.run import build

    common = with_overrides(TINY, ["callbacks.final_report=null", "network.dropout=0.2", "logger=none",
                                   "callbacks.checkpoint.every_n_train_steps=2", "objective=ict",
                                   "objective.s0=2", "objective.s1=8", "solver=consistency", "sampler.num_steps=null", "sampler.nfe=1"])

    def fit(overrides, name):
        cfg = compose("train", with_overrides(common, overrides), tmp_path / name)
        trainer, module, datamodule = build(cfg)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)

    straight = fit(["duration_kimg=0.256"], "straight")
    fit(["duration_kimg=0.128", "objective.duration_kimg=0.256"], "first")
    resumed = fit(["duration_kimg=0.256", f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"], "second")
    assert straight["global_step"] == resumed["global_step"] == 8
    assert_close_by_key(straight["state_dict"], resumed["state_dict"], "state_dict", rtol=0, atol=0)
    assert_close_by_key(straight["optimizer_states"], resumed["optimizer_states"], "optimizer_states", rtol=0, atol=0)


@pytest.mark.parametrize("overrides,message", [
    (["objective=ect", "objective.metric=pseudo_huber", "objective.c=0"], "objective.c must be a number > 0, got c=0"),
    (["objective=ect", "preconditioning=vp"], "objective=ECTObjective trains a consistency model on EDM's "
                                              "preconditioning .* use preconditioning=edm or edm2"),
    (["solver=consistency", "sampler.num_steps=null", "sampler.nfe=1"], "solver=consistency needs a network trained as a consistency model"),
    (["objective=scm", "objective.tangent_c=-1"], r"objective.tangent_c must be a number > 0, got tangent_c=-1"),
])
def test_bad_consistency_runs_are_refused_before_anything_is_written(overrides, message, tmp_path):
    import re

    result = run_script("train.py", with_overrides(TINY, ["logger=none", f"hydra.run.dir={tmp_path / 'run'}",
                                                          "duration_kimg=0.064", *overrides]), tmp_path)
    assert result.returncode != 0
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert re.search(message, last), result.stderr[-1500:]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("*.ckpt"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_init_from_a_network_of_another_resolution_is_refused(denoising_run, tmp_path):
    points = [o for o in TINY if not o.startswith("network.")]
    result = run_script("train.py", with_overrides(points, ["logger=none", f"hydra.run.dir={tmp_path / 'run'}",
                                                            "duration_kimg=0.064", f"init_from={denoising_run}",
                                                            "data=mixture", "network=mlp", *ECT]), tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"error: init_from={denoising_run} is a network for data of shape [1, 8, 8] (channels, "
                    f"resolution), this run's data has shape [2]: tune it on data of its own shape, or init from a "
                    f"network trained on this data"), result.stderr[-1500:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_eval_refuses_solver_consistency_on_a_denoising_run_naming_it(denoising_run, tmp_path):
    result = run_script("eval.py", [f"ckpt={denoising_run}", "solver=consistency", "sampler.num_steps=null",
                                    "sampler.nfe=1", "num_samples=8", "logger=none",
                                    f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(denoising_run) in lines[0] and \
        "solver=consistency needs a network trained as a consistency model" in lines[0], result.stderr[-1500:]
    assert not (tmp_path / "eval" / "metrics.json").exists()
