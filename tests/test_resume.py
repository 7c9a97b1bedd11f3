"""Resume: ``2N steps == N steps + resume + N steps`` exactly (weights, EMA, every optimizer state entry, the step
count), with and without gradient accumulation; a checkpoint of another model, batch size or seed is refused.
The 2-process (DDP) resume is in test_distributed.py."""
import pytest
import torch
from conftest import TINY, assert_close_by_key, compose, with_overrides

from edmlab.training.run import build

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

COMMON = with_overrides(TINY, ["callbacks.final_report=null", "network.dropout=0.1", "augment=edm",
                               "callbacks.checkpoint.every_n_train_steps=4", "logger=none"])


def fit(tmp_path, overrides, name):
    cfg = compose("train", with_overrides(COMMON, overrides), tmp_path / name)
    trainer, module, datamodule = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return tmp_path / name / "checkpoints" / "last.ckpt"


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("accumulate", [[], ["batch_gpu=16"]], ids=["one_batch", "batch_gpu"])
def test_exact_resume(accumulate, tmp_path):
    """Weights, EMA, Adam's step/exp_avg/exp_avg_sq and param groups, the step and cur_nimg: noise draws, dropout,
    augmentation and data order all continue where the first run stopped."""
    straight = load(fit(tmp_path, accumulate + ["duration_kimg=0.256"], "straight"))
    first = fit(tmp_path, accumulate + ["duration_kimg=0.128"], "first")
    resumed = load(fit(tmp_path, accumulate + ["duration_kimg=0.256", f"ckpt_path={first}"], "second"))
    assert straight["global_step"] == resumed["global_step"] == 8
    assert straight["edmlab"]["run"] == resumed["edmlab"]["run"] == \
        {"batch_size": 32, "seed": 0, "data.seed": 0, "ema.kind": "traditional", "ema.stds": None, "cur_nimg": 256}
    assert_close_by_key(straight["state_dict"], resumed["state_dict"], "state_dict", rtol=0, atol=0)
    assert len(straight["optimizer_states"]) == 1
    assert_close_by_key(straight["optimizer_states"], resumed["optimizer_states"], "optimizer_states", rtol=0, atol=0)
    assert set(straight["optimizer_states"][0]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    return fit(tmp_path_factory.mktemp("first"), ["duration_kimg=0.064"], "a")


@pytest.mark.parametrize("override,match", [
    ("network.model_channels=8", "another model"),
    ("batch_size=64", r"trained with batch_size=32 \(at cur_nimg=64\), this run has batch_size=64: resume with "
                      r"batch_size=32"),
    ("seed=1", "trained with seed=0 .*this run has seed=1"),
    ("data.seed=5", "trained with data.seed=0 .*this run has data.seed=5")])
def test_resume_with_another_model_batch_size_or_seed_is_refused(override, match, first_run, tmp_path):
    with pytest.raises(ValueError, match=match):
        fit(tmp_path, ["duration_kimg=0.256", override, f"ckpt_path={first_run}"], "b")
    assert not (tmp_path / "b" / "checkpoints").exists()
