"""The sweep report (edmlab.evaluation.sweep and its sweep_jobs, sweep_tables, sweep_plots, sweep_mean): the pivot of
the swept axes that leads sweep.md (cells mean ± s.e. over seeds with n, the real-data floor row), the plots of the
swept axes only, the csv's column order; seeds as a sweep axis: mean ± standard error over seeds per override
combination with n, failed seeds kept out of the mean and counted, evaluation jobs carrying their training run's
overrides, and runs of different data sets refused. The job directories are written by hand here, as Hydra and the
entry points lay them out (metrics.json, .hydra/overrides.yaml, a training run's config.yaml); the real commands
run in tests/test_eval.py and tests/test_study.py."""
import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from edmlab.evaluation.sweep import SweepReport, read_jobs, write_report
from edmlab.evaluation.sweep_mean import mean_se_text, standard_error

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
    assert "| edm | 4 | 0 | 2.50 ± 0.65 |" in table and "| vp | 2 | 1 | 12.0 ± 2.0 |" in table
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


def test_mean_and_standard_error_are_printed_to_the_standard_errors_two_digits():
    assert mean_se_text(2.5, math.sqrt(5 / 3) / 2) == "2.50 ± 0.65"  # s.e. 0.6455
    assert mean_se_text(12.0, 2.0) == "12.0 ± 2.0"
    assert mean_se_text(1234.5, 151.0) == "1230 ± 150"
    assert mean_se_text(0.012341, 0.00041) == "0.01234 ± 0.00041"
    assert mean_se_text(586.2386, 0.0013) == "586.24 ± 0.0013"  # at most five significant digits of the mean
    assert mean_se_text(3.0, None) == "3" and mean_se_text(7.25, math.nan) == "7.25"


def section(markdown: str, title: str) -> list[str]:
    """The table lines of the section of ``markdown`` that starts at ``## <title>``."""
    lines = markdown.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0].splitlines()
    return [line for line in lines if line.startswith("|")]


def solver_steps_sweep(root: Path) -> Path:
    """solver × sampler.num_steps × 3 seeds, digits FD by hand, the floor 1.25 recorded by every job; heun at 4
    steps loses its third seed."""
    fds = {("euler", 4): [2.0, 2.5, 4.0], ("euler", 8): [1.5, 1.5, 1.8], ("heun", 4): [1.75, 2.25, None],
           ("heun", 8): [1.25, 1.5, 1.5]}
    nfe = {("euler", 4): 4, ("euler", 8): 8, ("heun", 4): 7, ("heun", 8): 15}
    num = 0
    for (solver, steps), values in fds.items():
        for seed, fd in enumerate(values):
            record = None if fd is None else {"status": "ok", "digits_fd": fd, "nfe": nfe[solver, steps],
                                              "floor": {"digits_floor_fd": 1.25, "digits_floor_recall": 0.5}}
            job_dir(root, num, ["ckpt=bench:none", f"solver={solver}", f"sampler.num_steps={steps}",
                                f"seeds={1000 * seed}"], record)
            num += 1
    return root


def test_sweep_md_leads_with_the_pivot_of_the_swept_axes_with_mean_se_n_and_the_floor(tmp_path):
    sweep = solver_steps_sweep(tmp_path / "sweep")
    write_report(sweep, plots=False)
    text = (sweep / "sweep.md").read_text()
    assert text.index("## digits_fd by solver × sampler.num_steps") < text.index("## NFE per cell") < \
        text.index("## Jobs")
    # euler, 4: 2, 2.5, 4 → mean 17/6 = 2.833, s² = (0.694 + 0.111 + 1.361)/2 = 1.0833, s.e. = √(1.0833/3) = 0.601
    # euler, 8: 1.5, 1.5, 1.8 → mean 1.6, s² = (0.01 + 0.01 + 0.04)/2 = 0.03, s.e. = 0.1
    # heun, 4: 1.75, 2.25 (one failed) → mean 2, s = √0.125, s.e. = 0.25
    # heun, 8: 1.25, 1.5, 1.5 → mean 1.4167, s² = (0.0278 + 0.0069 + 0.0069)/2 = 0.02083, s.e. = 0.0833
    assert section(text, "digits_fd by solver × sampler.num_steps") == [
        "| solver \\ sampler.num_steps | 4 | 8 |",
        "|---|---:|---:|",
        "| euler | 2.83 ± 0.60 (n=3) | 1.60 ± 0.10 (n=3) |",
        "| heun | 2.00 ± 0.25 (n=2, 1 failed) | 1.417 ± 0.083 (n=3) |",
        "| real data (floor) | 1.25 | 1.25 |"]
    assert "mean ± standard error over seeds (`seeds`), n in each cell." in text
    assert "Last row: real data scored as the samples, at the same count (digits_floor_fd in metrics.json" in text
    assert section(text, "NFE per cell")[2:] == ["| euler | 4 | 8 |", "| heun | 7 | 15 |"]
    assert len(section(text, "Jobs")) == 2 + 12
    mean = (sweep / "sweep_mean.md").read_text()
    assert section(mean, "digits_fd by solver × sampler.num_steps") == \
        section(text, "digits_fd by solver × sampler.num_steps")


def test_one_axis_is_rows_three_axes_are_row_combinations_and_no_floor_without_one(tmp_path):
    one = tmp_path / "one"
    job_dir(one, 0, ["solver=heun"], {"mixture_ode_error": 0.5, "nfe": 35})
    job_dir(one, 1, ["solver=euler"], {"mixture_ode_error": 0.25, "nfe": 18})
    job_dir(one, 2, ["solver=dpm2"], {"status": "failed", "error": "boom"})
    write_report(one, plots=False)
    text = (one / "sweep.md").read_text()
    assert section(text, "mixture_ode_error by solver") == [
        "| solver | mixture_ode_error |", "|---|---:|", "| heun | 0.5 |", "| euler | 0.25 |", "| dpm2 | failed |"]
    assert "Each cell: one job." in text and "floor" not in text

    three = tmp_path / "three"
    num = 0
    for precond in ("vp", "edm"):
        for solver in ("euler", "heun"):
            for steps in (8, 4, 16):  # numeric values sorted by value, not in sweep order
                if (precond, solver, steps) != ("vp", "heun", 16):
                    job_dir(three, num, [f"preconditioning={precond}", f"solver={solver}",
                                         f"sampler.num_steps={steps}"], {"mixture_ode_error": num + 0.5, "nfe": 9})
                num += 1
    write_report(three, plots=False)
    assert section((three / "sweep.md").read_text(), "mixture_ode_error by preconditioning × solver × "
                                                     "sampler.num_steps") == [
        "| preconditioning | solver \\ sampler.num_steps | 4 | 8 | 16 |",
        "|---|---|---:|---:|---:|",
        "| vp | euler | 1.5 | 0.5 | 2.5 |",
        "| vp | heun | 4.5 | 3.5 | — |",
        "| edm | euler | 7.5 | 6.5 | 8.5 |",
        "| edm | heun | 10.5 | 9.5 | 11.5 |"]


def test_a_plot_per_numeric_swept_axis_only(tmp_path):
    solvers = tmp_path / "solvers"  # NFE differs (8 vs 15), but num_steps was not swept: no NFE plot
    job_dir(solvers, 0, ["solver=euler", "sampler.num_steps=8"], {"digits_fd": 3.0, "nfe": 8})
    job_dir(solvers, 1, ["solver=heun", "sampler.num_steps=8"], {"digits_fd": 2.0, "nfe": 15})
    write_report(solvers)
    assert sorted(p.name for p in solvers.glob("*.png")) == []

    grid = tmp_path / "grid"
    num = 0
    for rho in ("3", "7"):
        for steps in (4, 8):
            for churn in ("0", "10"):
                job_dir(grid, num, [f"sampler.rho={rho}", f"sampler.num_steps={steps}", f"sampler.S_churn={churn}",
                                    "solver=heun"], {"digits_fd": 1.0 + num, "nfe": 2 * steps - 1})
                num += 1
    write_report(grid)
    assert sorted(p.name for p in grid.glob("*.png")) == ["digits_fd_vs_S_churn.png", "digits_fd_vs_nfe.png",
                                                          "digits_fd_vs_rho.png"]


def test_csv_columns_put_the_axes_first_and_sigma_bins_in_numeric_order(tmp_path):
    sweep = tmp_path / "sweep"
    bins = ["loss_per_sigma/0.002-0.3", "loss_per_sigma/0.3-2", "loss_per_sigma/10-80", "loss_per_sigma/2-10",
            "loss_per_sigma/80-inf"]  # as strings sort them (Lightning's CSVLogger writes them so)
    for num, seed in enumerate((0, 1)):
        record = {"step": 100, "kimg": 12.8, "train_sec": 5.0, "sample_sec": 1.0, "num_samples": 8, "nfe": 35,
                  "train_loss": 0.3, **{b: float(k) for k, b in enumerate(bins)}, "digits_fd": 20.0 + seed,
                  "digits_precision": 0.5, "floor": {"digits_floor_fd": 12.0, "digits_floor_precision": 0.9}}
        job_dir(sweep, num, ["duration_kimg=12.8", f"seed={seed}"], record, DIGITS)
    write_report(sweep, plots=False)
    with open(sweep / "sweep.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["job", "seed", "duration_kimg", "digits_fd", "train_loss", "loss_per_sigma/0.002-0.3",
                      "loss_per_sigma/0.3-2", "loss_per_sigma/2-10", "loss_per_sigma/10-80", "loss_per_sigma/80-inf",
                      "digits_precision", "digits_floor_fd", "digits_floor_precision", "num_samples", "step", "kimg",
                      "train_sec", "sample_sec", "nfe", "status", "error"]
    # the seeds alone vary: one row of all jobs, with the floor
    text = (sweep / "sweep.md").read_text()
    assert section(text, "digits_fd by seed") == ["|  | digits_fd |", "|---|---:|", "| all jobs | 20.50 ± 0.50 |",
                                                  "| real data (floor) | 12 |"]
    assert "n = 2 per cell" in text


def test_an_s_e_of_float_rounding_prints_as_zero():
    from edmlab.evaluation.sweep_mean import mean_se_text

    assert mean_se_text(0.946, 7.9e-17) == "0.946 ± 0"
    assert mean_se_text(2.5, 0.6455) == "2.50 ± 0.65"
