"""Studies: EDM's Table 2 ladder presets (each one change from the previous, as the paper's rows), and the study
entry point (src/study.py) that trains a grid, evaluates every run and averages over seeds."""
import csv
import json
import math

import pytest
from conftest import TINY, compose, run_script, with_overrides
from omegaconf import OmegaConf

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def flat(cfg) -> dict:
    """The composed training config as {dotted key: value}, without Hydra's node and the run name."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    container.pop("task_name", None)
    walk(container, "")
    return out


def preset(name: str, tmp_path) -> dict:
    return flat(compose("train", [f"experiment={name}"], tmp_path))


def changes(before: dict, after: dict) -> dict:
    return {k: after.get(k) for k in set(before) | set(after) if before.get(k) != after.get(k)}


def under(keys, *prefixes) -> bool:
    return all(any(k == p or k.startswith(p + ".") for p in prefixes) for k in keys)


# EDM Table 2's rows as this project documents them for the digits (conf/experiment/ladder_*.yaml, README)
DIGITS_B = {"batch_size": 128, "optim.lr": 2.0e-3, "optim.lr_rampup_kimg": 20, "ema.halflife_kimg": 20,
            "ema.rampup_ratio": 0.05, "network.dropout": 0.13}
CIFAR_B = {"batch_size": 512, "optim.lr": 1.0e-3, "optim.lr_rampup_kimg": 10000, "ema.halflife_kimg": 500,
           "ema.rampup_ratio": 0.05, "network.dropout": 0.13,
           "callbacks.checkpoint.every_n_train_steps": 4883, "callbacks.sample_grid.every_n_steps": 4883}


@pytest.mark.parametrize("family", ["vp", "ve"])
@pytest.mark.parametrize("scale", ["digits", "cifar10"])
def test_each_ladder_preset_is_the_previous_one_plus_the_documented_change(family, scale, tmp_path):
    prefix = "ladder_" if scale == "digits" else "ladder_cifar10_"
    a, b, c, d, e, f = (preset(f"{prefix}{family}_{row}", tmp_path) for row in "abcdef")
    target = {"vp": "VP", "ve": "VE"}[family]
    assert (a["preconditioning._target_"], a["loss_weighting._target_"], a["noise_distribution._target_"]) == \
        (f"edmlab.{target}Precond", "edmlab.InverseVariance", f"edmlab.{target}Noise")
    assert a["augment"] is None
    if scale == "digits":
        assert a["data.dataset._target_"] == "edmlab.data.DigitsDataset"
        assert (a["batch_size"], a["optim.lr"], a["optim.lr_rampup_kimg"], a["ema.halflife_kimg"],
                a["ema.rampup_ratio"], a["network.dropout"], a["network.channel_mult"]) == \
            (32, 4.0e-4, 1.28, 35, None, 0.10, [1, 2, 2])
        assert a["network.embedding_type"] == {"vp": "positional", "ve": "fourier"}[family]
    else:
        assert a == preset(f"config_a_{family}", tmp_path)
    assert changes(a, b) == (DIGITS_B if scale == "digits" else CIFAR_B)
    assert changes(b, c) == {"network.channel_mult": [2, 2] if scale == "digits" else [2, 2, 2]}
    assert under(changes(c, d), "preconditioning") and d["preconditioning._target_"] == "edmlab.EDMPrecond"
    assert under(changes(d, e), "loss_weighting", "noise_distribution")
    assert (e["loss_weighting._target_"], e["noise_distribution._target_"]) == ("edmlab.EDMWeighting", "edmlab.EDMNoise")
    assert under(changes(e, f), "augment")
    assert (f["augment._target_"], f["augment.p"]) == ("edmlab.design.augment.AugmentPipe", 0.12)


def test_digits_ladder_c_has_fewer_parameters_than_b_and_f_conditions_on_augmentation(tmp_path):
    """C redistributes capacity (drops the 2×2 level, doubles 8×8): fewer parameters than B, as EDM's C (62M→56M);
    F's network takes the 9 augmentation labels."""
    from edmlab.training.run import build

    def module(name):
        cfg = compose("train", [f"experiment={name}", "logger=csv", "trainer.accelerator=cpu"], tmp_path / name)
        return build(cfg)[1]

    count = {row: sum(p.numel() for p in module(f"ladder_vp_{row}").net.parameters()) for row in "bc"}
    assert count["c"] < count["b"]
    assert module("ladder_vp_f").hparams.model["network_kwargs"]["augment_dim"] == 9


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_study_trains_evaluates_and_averages_over_seeds_keeping_a_failed_run(tmp_path):
    """Two seeds of a good learning rate and a bad one: the bad run fails to train and is a failed row; the good
    ones are evaluated, and the mean table holds their mean ± s.e. with n = 2 (the exit code is 1)."""
    train = with_overrides(TINY, ["logger=csv", "duration_kimg=0.064", "callbacks.final_report.num_samples=8",
                                  "sampler.num_steps=3", "trainer.log_every_n_steps=1", "optim.lr=2e-3,-1",
                                  "seed=0,1"])
    result = run_script("study.py", [*train, "--eval", "num_samples=32", "sampler.num_steps=3", "logger=none",
                                     "--dir", str(tmp_path / "study")], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    study = tmp_path / "study"
    rows = read_csv(study / "study.csv")
    good = [r for r in rows if r["optim.lr"] == "0.002"]
    assert [(r["seed"], r["status"]) for r in good] == [("0", "ok"), ("1", "ok")]
    bad = [r for r in rows if r["optim.lr"] == "-1"]  # both refused jobs are rows: the sweep went on after the first
    assert [(r["seed"], r["status"]) for r in bad] == [("0", "failed"), ("1", "failed")]
    assert all("optim.lr=-1" in r["error"] for r in bad) and "4 runs, 2 failed" in result.stdout
    evaluated = [json.loads(p.read_text())["digits_fd"] for p in sorted((study / "eval").glob("*/metrics.json"))]
    assert [float(r["digits_fd"]) for r in good] == pytest.approx(evaluated, rel=1e-9)
    mean = {r["optim.lr"]: r for r in read_csv(study / "study_mean.csv")}
    assert (mean["0.002"]["n"], mean["0.002"]["failed"]) == ("2", "0")
    assert (mean["-1"]["n"], mean["-1"]["failed"]) == ("0", "2")
    assert float(mean["0.002"]["digits_fd_mean"]) == pytest.approx(sum(evaluated) / 2, rel=1e-9)
    assert float(mean["0.002"]["digits_fd_se"]) == pytest.approx(abs(evaluated[0] - evaluated[1]) / 2, rel=1e-9)
    assert "study report:" in result.stdout and (study / "digits_fd_mean.png").is_file()
    trained = sorted(p.parent for p in (study / "train").glob("*/network.pt"))
    assert len(trained) == 2 and all((run / "loss_per_sigma.png").is_file() for run in trained)  # Fig. 5a per run


def test_study_refuses_its_own_folder_and_ckpt_options(tmp_path):
    result = run_script("study.py", ["seed=0,1", "hydra.sweep.dir=x"], tmp_path)
    assert result.returncode == 2 and "the study sets hydra.sweep.dir and ckpt itself" in result.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("family", ["vp", "ve"])
def test_family_presets_change_only_the_three_training_rows_of_the_digits_default(family, tmp_path):
    """Claim (d) compares preconditioning + loss weighting + p_train at equal budget: nothing else may differ from
    the digits default of conf/train.yaml (EDM's recipe; make train's experiment=digits adds EDM2's choices)."""
    default = flat(compose("train", [], tmp_path))
    edm, other = (preset(name, tmp_path) for name in ("family_edm", f"family_{family}"))
    assert edm == default
    assert under(changes(default, other), "preconditioning", "loss_weighting", "noise_distribution")
    target = family.upper()
    assert (other["preconditioning._target_"], other["loss_weighting._target_"], other["noise_distribution._target_"]) \
        == (f"edmlab.{target}Precond", "edmlab.InverseVariance", f"edmlab.{target}Noise")


@pytest.mark.parametrize("family", ["edm", "vp", "ve"])
def test_the_family_group_sets_the_three_training_rows_on_any_data_set(family, tmp_path):
    """``family=`` changes exactly preconditioning, loss weighting and p_train, also on the exact bench."""
    mixture = flat(compose("train", ["experiment=mixture"], tmp_path))
    chosen = flat(compose("train", ["experiment=mixture", f"family={family}"], tmp_path))
    assert under(changes(mixture, chosen), "preconditioning", "loss_weighting", "noise_distribution")
    target = {"edm": ("EDM", "EDMWeighting"), "vp": ("VP", "InverseVariance"), "ve": ("VE", "InverseVariance")}[family]
    assert (chosen["preconditioning._target_"], chosen["loss_weighting._target_"],
            chosen["noise_distribution._target_"], chosen["data.dataset._target_"]) \
        == (f"edmlab.{target[0]}Precond", f"edmlab.{target[1]}", f"edmlab.{target[0]}Noise", "edmlab.data.PointsDataset")
