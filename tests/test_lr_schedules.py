"""Learning-rate schedules: EDM's ramp-up and EDM2's inverse square-root decay, against their formulas."""
import math

import pytest
from conftest import compose

from edmlab.design.lr_schedules import learning_rate

EDM2 = {"kind": "edm2", "lr": 0.01, "ref_kimg": 143360, "rampup_kimg": 10000}


@pytest.mark.parametrize("nimg, expected", [(0, 0.0), (5_000_000, 0.005), (10_000_000, 0.01),
                                            (143_360_000, 0.01), (4 * 143_360_000, 0.005),
                                            (2048 * 70_000 * 9, 0.01 / 3)])
def test_edm2_inverse_square_root_decay(nimg, expected):
    """α = α_ref/√max(t/t_ref, 1)·min(t/t_rampup, 1) with EDM2 img512-S's α_ref 0.01, t_ref 70000×2048, 10 Mi warm-up."""
    assert learning_rate(nimg, EDM2) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_edm2_without_decay_or_warmup():
    assert learning_rate(0, {**EDM2, "rampup_kimg": 0}) == 0.01
    assert learning_rate(10**12, {**EDM2, "ref_kimg": 0}) == 0.01


@pytest.mark.parametrize("nimg, expected", [(0, 0.0), (5_000, 0.5e-3), (10_000, 1e-3), (10**9, 1e-3)])
def test_edm_ramp_up_then_constant(nimg, expected):
    assert learning_rate(nimg, {"kind": "edm", "lr": 1e-3, "rampup_kimg": 10}) == pytest.approx(expected, rel=1e-12)
    assert learning_rate(nimg, {"kind": "edm", "lr": 1e-3, "rampup_kimg": 0}) == (0.0 if nimg == 0 else 1e-3)


def test_config_groups_resolve_to_the_optim_values(tmp_path):
    cfg = compose("train", ["lr_schedule=edm2", "lr_schedule.ref_kimg=40", "optim.lr=0.01"], tmp_path)
    schedule = dict(cfg.lr_schedule)
    assert schedule == {"kind": "edm2", "lr": 0.01, "ref_kimg": 40, "rampup_kimg": cfg.optim.lr_rampup_kimg}
    assert learning_rate(160_000, schedule) == pytest.approx(0.01 / math.sqrt(4), rel=1e-12)
    cfg = compose("train", [], tmp_path)
    assert dict(cfg.lr_schedule) == {"kind": "edm", "lr": cfg.optim.lr, "rampup_kimg": cfg.optim.lr_rampup_kimg}


@pytest.mark.parametrize("schedule, message", [
    ({"kind": "cosine", "lr": 1.0}, "lr_schedule.kind='cosine' is unknown: use lr_schedule=edm or lr_schedule=edm2"),
    ({"kind": "edm", "lr": 0.0}, r"lr_schedule.lr=0.0 must be > 0 \(set optim.lr\)"),
    ({"kind": "edm2", "lr": 1.0, "ref_kimg": -1}, r"lr_schedule.ref_kimg=-1 must be >= 0")])
def test_bad_schedule_is_refused(schedule, message):
    with pytest.raises(ValueError, match=message):
        learning_rate(1000, schedule)


def test_training_module_follows_the_chosen_schedule(tmp_path):
    """lr_schedule=edm2 reaches the optimizer step through EDMModule.learning_rate; the default keeps EDM's ramp-up."""
    from edmlab.training.run import build

    tiny = ["network.model_channels=8", "network.channel_mult=[1]", "trainer.accelerator=cpu", "logger=none",
            "callbacks=none", "optim.lr=0.01", "optim.lr_rampup_kimg=10"]
    _, module, _ = build(compose("train", tiny + ["lr_schedule=edm2", "lr_schedule.ref_kimg=40"], tmp_path / "a"))
    for nimg in (0, 5_000, 10_000, 40_000, 160_000):
        expected = 0.01 * min(nimg / 10_000, 1) / math.sqrt(max(nimg / 40_000, 1))
        assert module.learning_rate(nimg) == pytest.approx(expected, rel=1e-12, abs=1e-18)
    _, module, _ = build(compose("train", tiny, tmp_path / "b"))
    assert [module.learning_rate(n) for n in (0, 5_000, 160_000)] == [0.0, 0.005, 0.01]
