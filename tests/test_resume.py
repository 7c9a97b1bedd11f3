"""Resume: ``2N steps == N steps + resume + N steps`` exactly (weights, EMA, every optimizer state entry, the step
count), with and without gradient accumulation; a checkpoint of another model, batch size or seed is refused; a
checkpoint written before the ema and lr_schedule options named their class resumes as a current one.
The 2-process (DDP) resume is in test_distributed.py."""
import pytest
import torch
from conftest import TINY, assert_close_by_key, compose, with_overrides

from edmlab.training.module import saved_tracker_state
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


def as_written_before_targets(checkpoint: dict) -> dict:
    """A checkpoint as edmlab wrote it before the ema and lr_schedule options named their class: ``kind:`` specs in
    its hyperparameters and config, and no tracker state (its run record holds ema.kind and ema.stds)."""
    kinds = {"TraditionalEMA": "traditional", "PowerEMA": "power", "EDMSchedule": "edm", "EDM2Schedule": "edm2"}

    def earlier(spec):
        spec = dict(spec)
        return {"kind": kinds[spec.pop("_target_").rsplit(".", 1)[-1]], **spec}

    hparams, edmlab = checkpoint["hyper_parameters"], checkpoint["edmlab"]
    for holder in {id(h): h for h in (hparams, hparams["config"], edmlab["config"])}.values():  # the configs are one
        for group in ("ema", "lr_schedule"):
            holder[group] = earlier(holder[group])
    del edmlab["ema"]
    return checkpoint


@pytest.mark.parametrize("ema", [["lr_schedule=edm2", "lr_schedule.ref_kimg=0.1"],
                                 ["ema=power", "ema.snapshot_kimg=0.032"]], ids=["traditional", "power"])
def test_checkpoint_of_kind_configs_resumes_as_a_current_one(ema, tmp_path):
    """The same weights, EMAs, optimizer state and (ema=power) snapshots as a resume of the checkpoint as written now;
    its tracker state comes from the run record and the saved ema.snapshot_dir."""
    first = fit(tmp_path, ema + ["duration_kimg=0.064"], "first")
    checkpoint = load(first)
    assert checkpoint["edmlab"]["ema"] == saved_tracker_state(as_written_before_targets(load(first)))
    torch.save(as_written_before_targets(checkpoint), tmp_path / "earlier.ckpt")
    resumed = {name: load(fit(tmp_path, ema + ["duration_kimg=0.128", f"ckpt_path={ckpt}"], name))
               for name, ckpt in (("current", first), ("earlier", tmp_path / "earlier.ckpt"))}
    assert resumed["current"]["global_step"] == resumed["earlier"]["global_step"] == 4
    for key in ("state_dict", "optimizer_states"):
        assert_close_by_key(resumed["current"][key], resumed["earlier"][key], key, rtol=0, atol=0)
    if "ema=power" in ema:
        names = [sorted(f.name for f in (tmp_path / name / "phema").glob("snapshot-*.pt")) for name in resumed]
        assert names[0] == names[1] == [f"snapshot-{n:012d}.pt" for n in (32, 64, 96, 128)]
