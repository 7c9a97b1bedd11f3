"""Seeds as a sweep axis (edmlab.evaluation.sweep, edmlab.evaluation.sweep_mean): mean ± standard error over seeds per override combination
with n, failed seeds kept out of the mean and counted, evaluation jobs carrying their training run's overrides, and
runs of different data sets refused. The job directories are written by hand here, as Hydra and the entry points
lay them out (metrics.json, .hydra/overrides.yaml, a training run's config.yaml); the real commands run in
tests/test_study.py."""
import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from edmlab.evaluation.sweep import SweepReport, read_jobs, write_report
from edmlab.evaluation.sweep_mean import standard_error

DIGITS = {"data": {"dataset": {"_target_": "edmlab.data.DigitsDataset", "split": "train"}}}
MIXTURE = {"data": {"dataset": {"_target_": "edmlab.data.PointsDataset", "preset": "ring8", "n": 8192}}}


def job_dir(root: Path, num: int, overrides: list[str], record: dict | None, config: dict | None = None) -> Path:
    """A job directory: ``record`` → metrics.json (None: the job died before writing it), ``config`` → the
    config.yaml that a training run writes."""
    directory = root / f"{num}_{','.join(o for o in overrides if not o.startswith('ckpt='))}"  # as conf/hydra
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    if record is not None:
        (directory / "metrics.json").write_text(json.dumps(record))
    if config is not None:
        (directory / "config.yaml").write_text(OmegaConf.to_yaml(config))
    return directory


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_standard_error_is_the_sample_deviation_over_root_n():
    # values 1, 2, 3, 4: mean 2.5, s² = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, s.e. = √(5/3) / 2
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-12)
    assert standard_error([10.0, 14.0]) == pytest.approx(2.0, rel=1e-12)  # s = √8, s/√2 = 2
    assert math.isnan(standard_error([3.0]))


def test_training_sweep_over_seeds_gives_mean_and_se_per_combination_and_keeps_failed_seeds_out(tmp_path):
    sweep = tmp_path / "sweep"
    fds = {"edm": [1.0, 2.0, 3.0, 4.0], "vp": [10.0, 14.0]}
    num = 0
    for precond, values in fds.items():
        for seed, fd in enumerate(values):
            job_dir(sweep, num, [f"preconditioning={precond}", f"seed={seed}"], {"digits_fd": fd, "kimg": 50.0},
                    DIGITS)
            num += 1
    job_dir(sweep, num, ["preconditioning=vp", "seed=2", "+launcher=joblib"], None, DIGITS)  # a seed that crashed

    report = write_report(sweep)

    rows = read_csv(sweep / "sweep.csv")
    assert [(r["preconditioning"], r["seed"], r["status"]) for r in rows][-2:] == [("vp", "1", "ok"),
                                                                                   ("vp", "2", "failed")]
    assert len(rows) == 7
    mean = {r["preconditioning"]: r for r in read_csv(sweep / "sweep_mean.csv")}
    assert set(mean) == {"edm", "vp"} and "seed" not in report.mean_header
    assert (mean["edm"]["n"], mean["edm"]["failed"]) == ("4", "0")
    assert float(mean["edm"]["digits_fd_mean"]) == pytest.approx(2.5, rel=1e-12)
    assert float(mean["edm"]["digits_fd_se"]) == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-12)
    assert (mean["vp"]["n"], mean["vp"]["failed"]) == ("2", "1")
    assert float(mean["vp"]["digits_fd_mean"]) == pytest.approx(12.0, rel=1e-12)
    assert float(mean["vp"]["digits_fd_se"]) == pytest.approx(2.0, rel=1e-12)
    table = (sweep / "sweep_mean.md").read_text()
    assert "| edm | 4 | 0 | 2.5 ± 0.65 |" in table and "| vp | 2 | 1 | 12 ± 2 |" in table
    assert (sweep / "digits_fd_mean.png").is_file()


def test_a_group_with_one_seed_has_a_mean_and_no_standard_error(tmp_path):
    sweep = tmp_path / "sweep"
    job_dir(sweep, 0, ["solver=heun", "seeds=0"], {"mixture_ode_error": 0.5, "nfe": 35})
    job_dir(sweep, 1, ["solver=heun", "seeds=1000"], {"mixture_ode_error": 0.7, "nfe": 35})
    job_dir(sweep, 2, ["solver=euler", "seeds=0"], {"mixture_ode_error": 0.9, "nfe": 18})
    write_report(sweep, plots=False)
    mean = {r["solver"]: r for r in read_csv(sweep / "sweep_mean.csv")}
    assert float(mean["heun"]["mixture_ode_error_mean"]) == pytest.approx(0.6, rel=1e-12)
    assert float(mean["heun"]["mixture_ode_error_se"]) == pytest.approx(0.1, rel=1e-12)
    assert (mean["euler"]["n"], mean["euler"]["mixture_ode_error_se"]) == ("1", "")


def test_no_seed_axis_writes_no_mean_table(tmp_path):
    sweep = tmp_path / "sweep"
    job_dir(sweep, 0, ["solver=heun"], {"mixture_ode_error": 0.5})
    job_dir(sweep, 1, ["solver=euler"], {"mixture_ode_error": 0.9})
    report = write_report(sweep, plots=False)
    assert not (sweep / "sweep_mean.csv").exists() and report.mean_table == []


def test_evaluation_of_trained_runs_averages_over_the_training_seeds(tmp_path):
    train = tmp_path / "train"
    runs = [job_dir(train, k, [f"loss_weighting={w}", f"seed={s}"], {"digits_fd": 99.0}, DIGITS)
            for k, (w, s) in enumerate([("edm", 0), ("edm", 1), ("vp", 0), ("vp", 1)])]
    sweep = tmp_path / "eval"
    for k, (run, fd) in enumerate(zip(runs, [3.0, 5.0, 7.0, 8.0])):
        job_dir(sweep, k, [f"ckpt='{run}'", "sampler.num_steps=18"], {"digits_fd": fd, "nfe": 35})
    write_report(sweep, plots=False)
    rows = read_csv(sweep / "sweep.csv")
    assert [(r["loss_weighting"], r["seed"], r["ckpt"]) for r in rows][0] == ("edm", "0", str(runs[0]))
    mean = {r["loss_weighting"]: r for r in read_csv(sweep / "sweep_mean.csv")}
    assert "ckpt" not in mean["edm"]
    assert float(mean["edm"]["digits_fd_mean"]) == pytest.approx(4.0, rel=1e-12)  # the eval's FD, not training's 99
    assert float(mean["edm"]["digits_fd_se"]) == pytest.approx(1.0, rel=1e-12)
    assert float(mean["vp"]["digits_fd_mean"]) == pytest.approx(7.5, rel=1e-12)
    assert float(mean["vp"]["digits_fd_se"]) == pytest.approx(0.5, rel=1e-12)


def runs_of_two_datasets(root: Path) -> Path:
    sweep = root / "train"
    job_dir(sweep, 0, ["experiment=digits", "seed=0"], {"digits_fd": 3.0}, DIGITS)
    job_dir(sweep, 1, ["experiment=digits", "seed=1"], {"digits_fd": 4.0}, DIGITS)
    job_dir(sweep, 2, ["experiment=mixture", "seed=0"], {"mixture_sliced_wasserstein": 0.1}, MIXTURE)
    return sweep


def test_runs_of_different_datasets_are_not_averaged(tmp_path):
    sweep = runs_of_two_datasets(tmp_path)
    with pytest.raises(ValueError, match=r"cannot average runs of different data sets: DigitsDataset \(.*0_experiment="
                                         r"digits,seed=0\) and PointsDataset\(preset=ring8\) \(.*2_experiment=mixture"):
        write_report(sweep, plots=False)
    assert len(read_csv(sweep / "sweep.csv")) == 3  # the per-job table is written before the refusal


def test_sweep_callback_reports_the_refusal_and_exits_1(tmp_path, capsys):
    sweep = runs_of_two_datasets(tmp_path)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with pytest.raises(SystemExit) as exit_info:
        SweepReport(wandb=False, plots=False).on_multirun_end(config)
    assert exit_info.value.code == 1
    assert "error: cannot average runs of different data sets: DigitsDataset" in capsys.readouterr().err


def test_jobs_are_read_with_their_seed_and_quoted_paths(tmp_path):
    run = job_dir(tmp_path / "train", 0, ["seed=3"], {"digits_fd": 1.0}, DIGITS)
    job_dir(tmp_path / "eval", 0, [f"ckpt='{run / 'network.pt'}'"], {"digits_fd": 2.0})
    (job,) = read_jobs(tmp_path / "eval")
    assert job.run_dir == run and job.overrides["seed"] == "3" and job.dataset == "DigitsDataset"
