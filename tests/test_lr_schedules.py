"""Learning-rate schedules: EDM's ramp-up and EDM2's inverse square-root decay, against their formulas."""
import math

import pytest
from conftest import CONF, compose
from omegaconf import OmegaConf

from edmlab.design.lr_schedules import EDM2Schedule, EDMSchedule
from edmlab.infra.spec import build
from edmlab.training.module import build_group

EDM2 = EDM2Schedule(lr=0.01, ref_kimg=143360, rampup_kimg=10000)


@pytest.mark.parametrize("nimg, expected", [(0, 0.0), (5_000_000, 0.005), (10_000_000, 0.01),
                                            (143_360_000, 0.01), (4 * 143_360_000, 0.005),
                                            (2048 * 70_000 * 9, 0.01 / 3)])
def test_edm2_inverse_square_root_decay(nimg, expected):
    """α = α_ref/√max(t/t_ref, 1)·min(t/t_rampup, 1) with EDM2 img512-S's α_ref 0.01, t_ref 70000×2048, 10 Mi warm-up."""
    assert EDM2(nimg) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_edm2_without_decay_or_warmup():
    assert EDM2Schedule(lr=0.01, ref_kimg=143360, rampup_kimg=0)(0) == 0.01
    assert EDM2Schedule(lr=0.01, ref_kimg=0, rampup_kimg=10000)(10**12) == 0.01


@pytest.mark.parametrize("nimg, expected", [(0, 0.0), (5_000, 0.5e-3), (10_000, 1e-3), (10**9, 1e-3)])
def test_edm_ramp_up_then_constant(nimg, expected):
    assert EDMSchedule(lr=1e-3, rampup_kimg=10)(nimg) == pytest.approx(expected, rel=1e-12)
    assert EDMSchedule(lr=1e-3, rampup_kimg=0)(nimg) == (0.0 if nimg == 0 else 1e-3)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "lr_schedule").glob("*.yaml")))
def test_each_option_builds_its_schedule_with_the_yaml_values(option, tmp_path):
    """``build`` of conf/lr_schedule/<option>.yaml: the yaml's class with the yaml's values (optim's for the
    interpolated ones), and α(t) at a few t equal to the closed form written out here."""
    cfg = compose("train", [f"lr_schedule={option}", "optim.lr=0.02", "optim.lr_rampup_kimg=8"], tmp_path)
    spec = OmegaConf.to_container(cfg.lr_schedule, resolve=True)
    schedule = build(spec)
    assert f"{type(schedule).__module__}.{type(schedule).__name__}" == spec.pop("_target_")
    assert {key: getattr(schedule, key) for key in spec} == spec and (spec["lr"], spec["rampup_kimg"]) == (0.02, 8)
    t_ref = spec.get("ref_kimg", math.inf) * 1000
    for nimg in (0, 2_000, 8_000, 10**6, 10**9):
        expected = 0.02 * min(nimg / 8_000, 1) / math.sqrt(max(nimg / t_ref, 1))
        assert schedule(nimg) == pytest.approx(expected, rel=1e-12, abs=1e-18), nimg


def test_config_groups_resolve_to_the_optim_values(tmp_path):
    cfg = compose("train", ["lr_schedule=edm2", "lr_schedule.ref_kimg=40", "optim.lr=0.01"], tmp_path)
    assert dict(cfg.lr_schedule) == {"_target_": "edmlab.design.lr_schedules.EDM2Schedule", "lr": 0.01,
                                     "ref_kimg": 40, "rampup_kimg": cfg.optim.lr_rampup_kimg}
    assert build(cfg.lr_schedule)(160_000) == pytest.approx(0.01 / math.sqrt(4), rel=1e-12)
    cfg = compose("train", [], tmp_path)
    assert dict(cfg.lr_schedule) == {"_target_": "edmlab.design.lr_schedules.EDMSchedule", "lr": cfg.optim.lr,
                                     "rampup_kimg": cfg.optim.lr_rampup_kimg}


@pytest.mark.parametrize("schedule, kwargs, message", [
    (EDMSchedule, {"lr": 0.0}, r"lr_schedule.lr=0.0 must be > 0 \(set optim.lr\)"),
    (EDMSchedule, {"lr": 1.0, "rampup_kimg": -2}, r"lr_schedule.rampup_kimg=-2 must be >= 0"),
    (EDM2Schedule, {"lr": 1.0, "ref_kimg": -1}, r"lr_schedule.ref_kimg=-1 must be >= 0")])
def test_bad_schedule_is_refused(schedule, kwargs, message):
    with pytest.raises(ValueError, match=message):
        schedule(**kwargs)


def test_a_kind_spec_of_earlier_configs_is_refused_in_one_line():
    """Configs and checkpoints written before the options named their class carry ``kind: edm2``."""
    with pytest.raises(ValueError, match=r"^lr_schedule=\{'kind': 'edm2', 'lr': 0.01\} names no _target_: "
                                         r"lr_schedule.kind='edm2' is the form written before the lr_schedule options "
                                         r"named their class; give it the _target_ of conf/lr_schedule/edm2.yaml, or "
                                         r"train \(and resume\) with src/train.py lr_schedule=edm2$"):
        build_group("lr_schedule", {"kind": "edm2", "lr": 0.01})


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
