"""What a training run reports and the lightning-hydra-template habits of src/train.py: kimg, img/s and lr in the
progress bar; the end-of-run summary (finished or stopped by a signal); a final report sized by the run; W&B only
for a run that logs a curve; tags; logger=tensorboard; the debug group; launcher=<option> without the +."""
import json
import math
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, TINY, compose, run_script, with_overrides
from omegaconf import OmegaConf, open_dict

from edmlab.infra.jobs import failure_message, plain_group_overrides
from edmlab.training.callbacks import FinalReport, ProgressStats
from edmlab.training.guard import Interrupted
from edmlab.training.loggers import MissingPackage
from edmlab.training.run import ConfigError, build, quiet_loggers, resume_command, train
from edmlab.training.run_dir import summary

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TESTS = Path(__file__).resolve().parent
# 2 steps of 8 images through a 16-channel net: what each real run of this file trains.
SMALL = with_overrides(TINY, ["batch_size=8", "trainer.max_steps=2", "sampler.num_steps=3",
                              "callbacks.final_report.num_samples=8", "callbacks.final_report.min_samples=4"])


def fit(run_dir: Path, overrides: list[str]):
    cfg = compose("train", with_overrides(SMALL, overrides), run_dir)
    trainer, module, datamodule = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    return trainer, module


# --- the progress bar ----------------------------------------------------------------------------------------------


def test_progress_stats_are_kimg_the_window_rate_and_the_steps_lr():
    """kimg = step·B/1000; img/s = images of the last `window` steps over their time (none after one step)."""
    stats = ProgressStats(window=2)
    module = SimpleNamespace(batch_size=64)
    optimizer = SimpleNamespace(param_groups=[{"lr": 3e-4}])
    shown = []
    for step, now in [(1, 10.0), (2, 10.5), (3, 10.7), (4, 11.5)]:
        shown.append(stats.stats(SimpleNamespace(global_step=step, optimizers=[optimizer]), module, now))
    assert shown[0] == {"kimg": 0.064, "lr": 3e-4}
    assert shown[1]["img/s"] == 128 and shown[2]["img/s"] == round(2 * 64 / 0.7)
    assert shown[3] == {"kimg": 0.256, "img/s": round(2 * 64 / 1.0), "lr": 3e-4}  # steps 2..4: the window of 2


def test_progress_bar_shows_kimg_img_per_sec_and_lr_beside_the_loss_and_the_csv_log_does_not(tmp_path):
    trainer, module = fit(tmp_path / "run", ["trainer.enable_progress_bar=true", "trainer.max_steps=3",
                                             "trainer.log_every_n_steps=1", "callbacks.final_report=null"])
    shown = trainer.progress_bar_metrics
    assert {"kimg", "img/s", "lr", "train/loss"} <= shown.keys()
    assert shown["kimg"] == pytest.approx(3 * 8 / 1000)
    assert shown["lr"] == pytest.approx(module.learning_rate(2 * 8), rel=1e-6)  # the rate of the last step taken
    assert shown["img/s"] > 0
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/kimg" in header and not {"kimg", "img/s", "lr"} & set(header)


# --- the final report's size ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kimg,scored,expected", [
    (500, True, 297), (10, True, 297), (5, True, 149), (0.128, True, 16), (0.128, False, 16), (500, False, 100)])
def test_the_report_draws_all_samples_from_full_from_kimg_on_and_proportionally_fewer_before(kimg, scored, expected):
    """make train (500 kimg) keeps its 297 samples; a shorter run draws ⌈297·kimg/10⌉, at least 16; without a
    metric only the 100 grid images."""
    report = FinalReport("unused", num_samples=297, grid_images=100, full_from_kimg=10, min_samples=16)
    assert report.sample_count(kimg, scored) == expected


def test_the_report_size_can_be_fixed_or_skipped():
    assert FinalReport("unused", num_samples=297, full_from_kimg=0).sample_count(0.128, True) == 297
    assert FinalReport("unused", num_samples=8, min_samples=16).sample_count(0.128, True) == 8  # never above
    assert FinalReport("unused", num_samples=0).sample_count(500, True) == 0
    with pytest.raises(ValueError, match=r"callbacks.final_report.full_from_kimg=-1 must be a number >= 0"):
        FinalReport("unused", full_from_kimg=-1)


def test_a_report_of_no_samples_writes_the_network_and_the_run_numbers_only(tmp_path):
    fit(tmp_path / "run", ["callbacks.final_report.num_samples=0"])
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert (run / "network.pt").is_file() and not (run / "samples.png").exists()
    assert metrics["num_samples"] == 0 and metrics["step"] == 2 and "digits_fd" not in metrics


# --- the end-of-run summary ----------------------------------------------------------------------------------------


def test_a_finished_run_ends_with_its_dir_scores_and_files(tmp_path):
    """The real entry point: after Lightning's last line, stdout ends with the run dir, step, kimg, the FD with its
    floor (at the count drawn, and why it is not num_samples), and the files written."""
    result = run_script("train.py", with_overrides(SMALL, ["hydra.run.dir=run", "logger=csv",
                                                           "callbacks.final_report.num_samples=297"]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_samples"] == 4  # ⌈297 · 0.016 / 10⌉ = 1, at least min_samples=4
    lines = result.stdout.strip().splitlines()[-3:]
    assert lines[0] == f"run dir: run (step 2, 0.016 kimg, train_loss {metrics['train_loss']:.4g}, " \
                       f"{metrics['images_per_sec']:.0f} img/s)"
    fd, floor = metrics["digits_fd"], metrics["floor"]["digits_floor_fd"]
    assert lines[1].startswith(f"  digits_fd={fd:.4g} (floor {floor:.4g}), digits_precision=")
    assert lines[1].endswith("[4 samples, not 297: a 0.016-kimg run, the full report from 10 kimg "
                             "(callbacks.final_report.full_from_kimg)]")
    assert lines[2].split() == ["network.pt", "samples.png", "metrics.json", "checkpoints/last.ckpt"]
    assert "`Trainer.fit` stopped" in result.stderr  # Lightning's line comes first; the summary is the last word


def test_a_run_stopped_by_a_signal_ends_with_its_step_and_the_resume_command(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(TESTS))
    run = tmp_path / "run"
    cfg = compose("train", with_overrides(SMALL, ["trainer.max_steps=6", "callbacks.final_report.num_samples=8",
                                                  "+callbacks.signal._target_=signal_sender.SendSignal",
                                                  "+callbacks.signal.signal_name=SIGTERM",
                                                  "+callbacks.signal.at_step=2"]), run)
    with open_dict(cfg):
        cfg.pop("hydra")  # src/train.py's config has no hydra node (HydraConfig keeps its own copy)
    with pytest.raises(Interrupted):
        train(cfg)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3].startswith(f"run dir: {run} (SIGTERM: stopped, no final report, step 3, 0.024 kimg")
    assert lines[-2].split() == ["checkpoints/last.ckpt"]
    assert lines[-1].startswith("  resume in place: python src/train.py network.model_channels=16 ")
    assert lines[-1].endswith(f" trainer.max_steps=6 callbacks.final_report.num_samples=8 "
                              f"+callbacks.signal._target_=signal_sender.SendSignal +callbacks.signal.signal_name=SIGTERM "
                              f"+callbacks.signal.at_step=2 hydra.run.dir={run} ckpt_path={run}")
    assert not (run / "network.pt").exists()


def test_the_summary_of_a_dir_without_a_report_names_what_is_missing(tmp_path):
    assert summary(tmp_path) == [f"run dir: {tmp_path}", "  no network.pt, metrics.json or checkpoint written"]


def test_the_resume_command_quotes_for_the_shell_and_leaves_out_launcher_and_dirs(tmp_path):
    compose("train", ["+launcher=joblib", "network.channel_mult=[1,2]", "ckpt_path=old", "seed=3"], tmp_path)
    assert resume_command(Path("my run")) == \
        "python src/train.py 'network.channel_mult=[1,2]' seed=3 hydra.run.dir='my run' ckpt_path='my run'"


# --- W&B, tags, TensorBoard ----------------------------------------------------------------------------------------


def loggers_of(tmp_path, overrides):
    """(W&B logger or None, CSV logger or None, module) of a built SMALL run with ``logger=default``."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    trainer, module, _ = build(compose("train", with_overrides(SMALL, ["logger=default", *overrides]),
                                       tmp_path / "run"))
    wandb = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    csv = [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]
    return (wandb or [None])[0], (csv or [None])[0], module


def test_wandb_joins_only_a_run_that_logs_a_curve(tmp_path):
    """2 steps with a log row every 5: W&B left out (CSV kept); a row every 2 steps: W&B in; fast_dev_run (where
    Lightning mutes every logger): not even built."""
    wandb, csv, _ = loggers_of(tmp_path, ["trainer.log_every_n_steps=5"])
    assert wandb is None and csv is not None
    wandb, csv, _ = loggers_of(tmp_path, ["trainer.log_every_n_steps=2"])
    assert wandb is not None and csv is not None
    cfg = compose("train", with_overrides(SMALL, ["logger=default", "trainer.log_every_n_steps=1"]), tmp_path)
    assert quiet_loggers(cfg, 2) == ()
    with open_dict(cfg):
        cfg.trainer.fast_dev_run = True
    assert quiet_loggers(cfg, 2) == ("wandb",)


def test_tags_go_to_the_wandb_run_and_into_the_config(tmp_path):
    wandb, _, module = loggers_of(tmp_path, ["trainer.log_every_n_steps=1", "tags=[baseline,vp,2024]"])
    assert wandb._wandb_init["tags"] == ["baseline", "vp", "2024"]
    assert module.hparams.config["tags"] == ["baseline", "vp", "2024"]
    wandb, _, module = loggers_of(tmp_path, ["trainer.log_every_n_steps=1"])
    assert wandb._wandb_init["tags"] == [] and module.hparams.config["tags"] == []


@pytest.mark.parametrize("value,match", [("baseline", r"tags='baseline' must be a list of names: tags=\[baseline\]"),
                                         ("[a,'']", r"tags\[1\]='' must be a name of 1 to 64 characters")])
def test_a_bad_tags_value_is_refused_naming_it(value, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        build(compose("train", with_overrides(SMALL, [f"tags={value}"]), tmp_path / "run"))


def tensorboard_scalars(folder: Path) -> dict:
    """{tag: [values]} of the scalars in the TFRecord event files under ``folder`` (length, crc, event, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    found = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 16 + length
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    found.setdefault(value.tag, []).append(value.simple_value)
    return found


def test_logger_tensorboard_writes_the_curves_and_the_final_scores(tmp_path):
    fit(tmp_path / "run", ["logger=tensorboard", "trainer.log_every_n_steps=1"])
    run = tmp_path / "run"
    scalars = tensorboard_scalars(run / "tensorboard")
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(scalars["train/loss"]) == 2 and (run / "csv" / "metrics.csv").is_file()
    assert scalars["final/digits_fd"] == [pytest.approx(metrics["digits_fd"], rel=1e-6)]


def test_logger_tensorboard_without_its_package_is_one_line_naming_it(tmp_path, monkeypatch):
    import importlib.util

    import edmlab.training.loggers as loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec",
                        lambda name, *a: None if name in loggers.TENSORBOARD_WRITERS else real(name, *a))
    with pytest.raises(MissingPackage) as refused:
        build(compose("train", with_overrides(SMALL, ["logger=tensorboard"]), tmp_path / "run"))
    assert failure_message(refused.value) == (
        "logger=tensorboard needs the tensorboard package, which is not installed: pip install tensorboard (or the "
        "lighter tensorboardX); or log with logger=csv or logger=wandb")


# --- the debug group -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option,trainer", [("fast_dev_run", {"fast_dev_run": True}),
                                            ("overfit", {"overfit_batches": 1, "max_steps": 200}),
                                            ("limit", {"max_steps": 20, "log_every_n_steps": 5}),
                                            ("default", {"max_steps": -1})])
def test_every_debug_option_composes_into_outputs_debug_with_the_csv_log_only(option, trainer, tmp_path):
    cfg = compose("train", ["experiment=digits", f"debug={option}"], tmp_path)
    assert cfg.task_name == "debug" and set(cfg.logger) == {"csv"} and cfg.duration_kimg == 500
    assert {key: cfg.trainer.get(key) for key in trainer} == trainer
    assert cfg.hydra.run.dir.startswith("outputs/debug/")


def test_the_command_line_wins_over_the_debug_option(tmp_path):
    cfg = compose("train", ["debug=limit", "trainer.max_steps=3", "logger=none"], tmp_path)
    assert cfg.trainer.max_steps == 3 and not cfg.logger


def test_debug_fast_dev_run_trains_one_step_to_a_small_report(tmp_path):
    args = [o for o in SMALL if not o.startswith(("logger=", "trainer.max_steps="))]
    result = run_script("train.py", ["debug=fast_dev_run", *args], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "debug").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["step"], metrics["num_samples"]) == (1, 4) and (run / "network.pt").is_file()
    assert not (run / "wandb").exists() and "run dir: outputs/debug/" in result.stdout


def test_debug_overfit_trains_on_the_same_first_batch(tmp_path):
    """Lightning's overfit_batches replaces the endless sampler by the data set's first batch, at every step."""
    seen = []
    from edmlab.training.module import EDMModule

    original = EDMModule.training_step
    EDMModule.training_step = lambda self, batch, batch_idx: seen.append(batch[0].clone()) or original(self, batch,
                                                                                                      batch_idx)
    try:
        trainer, module = fit(tmp_path / "run", ["debug=overfit", "trainer.max_steps=3", "logger=none",
                                                 "callbacks.final_report=null"])
    finally:
        EDMModule.training_step = original
    first = torch.stack([trainer.datamodule.train_set[i][0] for i in range(8)]).float()
    assert trainer.global_step == 3 and len(seen) == 3
    for batch in seen:
        torch.testing.assert_close(batch, first, rtol=0, atol=0)


# --- launchers -----------------------------------------------------------------------------------------------------


def test_launcher_option_gets_the_plus_that_hydra_needs():
    assert plain_group_overrides(["-m", "launcher=joblib", "seed=0,1", "+launcher=slurm", "hydra.launcher.n_jobs=2",
                                  "launcher"]) == \
        ["-m", "+launcher=joblib", "seed=0,1", "+launcher=slurm", "hydra.launcher.n_jobs=2", "launcher"]


def test_a_training_sweep_runs_under_launcher_joblib_without_the_plus(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script("train.py", ["-m", "launcher=joblib", "seed=0,1", f"hydra.sweep.dir={sweep}",
                                     *with_overrides(SMALL, ["logger=none", "callbacks.final_report.num_samples=0"])],
                        tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "network.pt").is_file())
    assert [json.loads((job / "metrics.json").read_text())["step"] for job in jobs] == [2, 2]
    assert [OmegaConf.load(job / "config.yaml").seed for job in jobs] == [0, 1]
    assert OmegaConf.load(jobs[0] / ".hydra" / "hydra.yaml").hydra.launcher._target_.endswith("JoblibLauncher")
    assert "(2 jobs, 0 failed)" in result.stdout


def test_an_evaluation_sweep_runs_under_launcher_joblib_without_the_plus(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script("eval.py", ["-m", "launcher=joblib", "ckpt=bench:ring8", "num_samples=8", "logger=none",
                                    "sampler.num_steps=2,3", "grid_images=0", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 2 and all(r.get("status", "ok") == "ok" for r in records)
    assert re.search(r"\(2 jobs, 0 failed\)", result.stdout)
