"""The shell around a training run: stop signals, atomic writes, the order at the end, a diverging loss, one run
per run dir, what a resume checks, and refusals before anything is written."""
import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, assert_close_by_key, compose, run_script, with_overrides

from edmlab.infra.files import TMP_TAG, atomic_torch_save, atomic_write_bytes, remove_orphans
from edmlab.training.checkpoint_io import read_checkpoint
from edmlab.training.guard import Interrupted, TrainingDiverged
from edmlab.training.run import ConfigError, build, check_resume
from edmlab.training.run_dir import RunDirError

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TESTS = Path(__file__).resolve().parent
COMMON = with_overrides(TINY, ["callbacks.final_report=null", "network.dropout=0.1", "augment=edm",
                               "callbacks.checkpoint.every_n_train_steps=100", "logger=none"])
SIGNAL = "+callbacks.signal._target_=signal_sender.SendSignal"


def fit(run_dir: Path, overrides: list[str]):
    cfg = compose("train", with_overrides(COMMON, overrides), run_dir)
    trainer, module, datamodule = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return run_dir / "checkpoints" / "last.ckpt"


def state(path: Path) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return {"step": blob["global_step"], "weights": blob["state_dict"], "adam": blob["optimizer_states"]}


def assert_same_training_state(a: Path, b: Path):
    a, b = state(a), state(b)
    assert a["step"] == b["step"]
    assert_close_by_key(a["weights"], b["weights"], "state_dict", rtol=0, atol=0)
    assert_close_by_key(a["adam"], b["adam"], "optimizer_states", rtol=0, atol=0)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """10 uninterrupted steps, with and without gradient accumulation."""
    root = tmp_path_factory.mktemp("straight")
    return {name: fit(root / name, extra + ["duration_kimg=0.32"])
            for name, extra in (("one_batch", []), ("batch_gpu", ["batch_gpu=16"]))}


@pytest.fixture
def importable_sender(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


@pytest.mark.parametrize("signame,code", [("SIGTERM", 143), ("SIGINT", 130)])
@pytest.mark.parametrize("accumulate", ["one_batch", "batch_gpu"])
def test_a_stop_signal_saves_the_step_and_resumes_bit_for_bit(signame, code, accumulate, straight, tmp_path,
                                                              importable_sender):
    """The signal arrives inside step 4 (in its first micro-batch under accumulation): the run finishes that
    optimizer step, writes last.ckpt at step 4, and stops with 128 + signum; resuming it gives the 10-step run's
    weights and Adam state bit for bit."""
    extra = ["batch_gpu=16"] if accumulate == "batch_gpu" else []
    run = tmp_path / "run"
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)  # SIG_IGN under `cmd &`
    with pytest.raises(Interrupted) as stopped:
        fit(run, extra + ["duration_kimg=0.32", SIGNAL, f"+callbacks.signal.signal_name={signame}",
                          "+callbacks.signal.at_step=3"])
    assert stopped.value.code == code and f"{signame}: stopped at step 4" in stopped.value.message
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # restored
    resumed = fit(run, extra + ["duration_kimg=0.32", f"ckpt_path={run}"])
    assert_same_training_state(straight[accumulate], resumed)


@pytest.mark.slow
@pytest.mark.parametrize("signame,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_from_outside_exits_like_a_killed_job_with_a_checkpoint(signame, code, tmp_path):
    """src/train.py killed by another process while it trains: exit 128 + signum (what a shell and a scheduler
    report for a killed job, never 0), one line naming the checkpoint, and last.ckpt at the step it stopped."""
    run = tmp_path / "run"
    args = with_overrides(TINY, ["logger=csv", "+logger.csv.flush_logs_every_n_steps=1", "trainer.log_every_n_steps=1",
                                 "duration_kimg=100", f"hydra.run.dir={run}"])
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = run / "csv" / "metrics.csv", time.time() + 240
    while not (log.is_file() and log.read_text().count("\n") > 2) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    step = read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert step > 0 and f"{signame}: stopped at step {step} " in err
    assert not (run / "network.pt").exists()


def test_atomic_write_survives_a_kill_mid_write_with_tmpdir_on_another_file_system(tmp_path):
    """With $TMPDIR on a tmpfs (another file system than the target), a writer killed (SIGKILL) in the middle of
    its write leaves the old file whole; the temporary file is in the target's own dir (none in $TMPDIR), and the
    next start removes it."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's tmp dir")
    other_tmp = Path(shm / f"edmlab-test-{os.getpid()}")
    other_tmp.mkdir()
    try:
        target = tmp_path / "last.ckpt"
        atomic_write_bytes(target, b"old complete checkpoint")
        writer = textwrap.dedent(f"""
            import sys, time
            from edmlab.infra.files import atomic_write
            def slow(f):
                f.write(b"partial new"); f.flush(); print("writing", flush=True); time.sleep(60)
            atomic_write({str(target)!r}, slow)
        """)
        proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "TMPDIR": str(other_tmp)})
        assert proc.stdout.readline().strip() == "writing"
        proc.kill()
        proc.wait(timeout=30)
        assert target.read_bytes() == b"old complete checkpoint"
        orphans = list(tmp_path.glob(f".last.ckpt{TMP_TAG}*"))
        assert len(orphans) == 1 and orphans[0].read_bytes() == b"partial new"
        assert list(other_tmp.iterdir()) == []
        assert remove_orphans(tmp_path) == orphans and not orphans[0].exists()
        atomic_torch_save({"step": 2}, target)
        assert torch.load(target, weights_only=True) == {"step": 2}
    finally:
        shutil.rmtree(other_tmp, ignore_errors=True)


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"{}")

    def fail(f):
        f.write(b"{\"half")
        raise OSError(28, "No space left on device")

    from edmlab.infra.files import atomic_write
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"{}" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_last_checkpoint_is_written_before_the_final_report(tmp_path, monkeypatch):
    """A final report that fails (here: its sampling raises) leaves last.ckpt of the final step."""
    from edmlab.training.callbacks import FinalReport

    def broken(self, module, count):
        raise RuntimeError("the final report's sampler broke")

    monkeypatch.setattr(FinalReport, "draw", broken)
    cfg = compose("train", with_overrides(TINY, ["logger=none", "duration_kimg=0.224",
                                                 "callbacks.checkpoint.every_n_train_steps=5"]), tmp_path)
    trainer, module, datamodule = build(cfg)
    with pytest.raises(RuntimeError, match="final report's sampler broke"):
        trainer.fit(module, datamodule=datamodule)
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 7


def test_a_diverging_loss_stops_the_run_loudly_and_exports_nothing(tmp_path):
    """optim.lr=1e4 with no ramp-up: the loss turns non-finite; the run stops with one line naming the step, the
    loss and the lr, exit 2, and neither network.pt nor metrics.json nor a checkpoint of the diverged state exists."""
    result = run_script("train.py", with_overrides(TINY, ["logger=none", "optim.lr=1e4", "optim.lr_rampup_kimg=0",
                                                          "duration_kimg=3.2", f"hydra.run.dir={tmp_path / 'run'}"]),
                        tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    line = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert len(line) == 1 and "training diverged: the loss is nan at step" in line[0] and "(lr 1e+04)" in line[0]
    assert not (tmp_path / "run" / "network.pt").exists() and not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_nonfinite_step_is_found_and_named(tmp_path, monkeypatch):
    """A NaN loss at one step (injected into the data at step 3) is reported as that step; the periodic checkpoint
    of step 2 is kept and nothing is written afterwards."""
    from edmlab.design.loss import DenoisingLoss

    original = DenoisingLoss.__call__
    calls = {"n": 0}

    def poisoned(self, net, images, *args, **kwargs):
        calls["n"] += 1
        return original(self, net, images * float("nan") if calls["n"] == 3 else images, *args, **kwargs)

    monkeypatch.setattr(DenoisingLoss, "__call__", poisoned)
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at step 3 \(lr .*the last good checkpoint .*kept"):
        fit(tmp_path, ["duration_kimg=0.32", "callbacks.checkpoint.every_n_train_steps=2",
                       "trainer.log_every_n_steps=50"])
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    args = with_overrides(TINY, ["logger=default", "duration_kimg=0.16", f"hydra.run.dir={root / 'run'}",
                                 "callbacks.final_report.num_samples=8"])
    result = run_script("train.py", args, root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run", args


def test_a_dir_that_holds_another_run_is_refused_and_left_as_it_was(finished_run, tmp_path):
    run, args = finished_run
    before = {p: p.read_bytes() for p in (run / "network.pt", run / "metrics.json", run / "config.yaml")}
    result = run_script("train.py", with_overrides(args, ["seed=1"]), tmp_path)
    assert result.returncode == 2
    assert f"error: {run} already holds a run (config.yaml, checkpoints, network.pt, metrics.json): resume it with " \
           f"ckpt_path={run}" in result.stderr
    assert all(p.read_bytes() == data for p, data in before.items())


def test_a_dir_in_use_by_a_live_process_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242\n")
        held.flush()
        result = run_script("train.py", with_overrides(TINY, ["logger=none", f"hydra.run.dir={run}"]), tmp_path)
    assert result.returncode == 2
    assert f"error: {run} is in use by a live training process (pid 4242)" in result.stderr
    assert not (run / "config.yaml").exists()


def test_resume_in_place_appends_the_csv_log_and_keeps_last_ckpt(finished_run, tmp_path):
    """A copy of a finished run dir resumed in place (ckpt_path=<the copy>) to twice the length: its csv log holds
    the first part's rows and the second's, its W&B id is kept, and it writes last.ckpt (never last-v1.ckpt)."""
    run, args = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    first_rows = list(csv.DictReader((copy / "csv" / "metrics.csv").open()))
    run_id = json.loads((copy / "run.json").read_text())["wandb_id"]
    result = run_script("train.py", with_overrides(args, ["duration_kimg=0.32", f"hydra.run.dir={copy}",
                                                          f"ckpt_path={copy}"]), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((copy / "csv" / "metrics.csv").open()))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert rows[:len(first_rows)] == [{**r, **{k: "" for k in rows[0] if k not in r}} for r in first_rows]
    assert min(steps) < 5 and max(steps) >= 9
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["last.ckpt"]
    assert read_checkpoint(copy / "checkpoints" / "last.ckpt")["global_step"] == 10
    assert json.loads((copy / "run.json").read_text())["wandb_id"] == run_id


@pytest.fixture(scope="module")
def power_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("power")
    return fit(root, ["duration_kimg=0.064", "ema=power"]), root


@pytest.mark.parametrize("override,match", [
    (["ema=power", "ema.stds=[0.05,0.2]"],
     r"was trained with ema.stds=\[0.05, 0.1\] .*this run has ema.stds=\[0.05, 0.2\]"),
    (["ema=traditional"], r"was trained with ema.kind=power .*this run has ema.kind=traditional"),
    (["ema=power", "duration_kimg=0.064"], r"is at step 2 and this run ends at step 2 .*already complete"),
])
def test_resume_refuses_what_it_cannot_honour(override, match, power_run, tmp_path):
    ckpt, _ = power_run
    cfg = compose("train", with_overrides(COMMON, ["duration_kimg=0.128", *override, f"ckpt_path={ckpt}"]),
                  tmp_path / "b")
    with pytest.raises((ValueError, ConfigError), match=match):
        build(cfg)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("override,match", [
    ("optim.lr=abc", r"optim.lr='abc' must be a number > 0"),
    ("noise_distribution.P_mean=abc", r"noise_distribution.P_mean='abc' must be a number"),
    ("ema.rampup_ratio=-1", r"ema.rampup_ratio=-1 must be a number >= 0 or null"),
    ("optim.betas=[0.9,1.5]", r"optim.betas\[1\]=1.5 must be a number >= 0 and < 1"),
    ("optim.eps=0", r"optim.eps=0 must be a number > 0"),
    ("batch_size=abc", r"batch_size='abc' must be an integer >= 1"),
])
def test_bad_values_are_refused_naming_the_key(override, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        build(compose("train", with_overrides(COMMON, [override]), tmp_path / "r"))


def test_ckpt_path_takes_a_run_dir_and_refuses_a_network_file(finished_run, tmp_path):
    run, _ = finished_run
    cfg = compose("train", with_overrides(TINY, ["duration_kimg=0.32", f"ckpt_path={run}"]), tmp_path / "b")
    build(cfg)
    assert cfg.ckpt_path == str(run / "checkpoints" / "last.ckpt")
    cfg = compose("train", with_overrides(TINY, [f"ckpt_path={run / 'network.pt'}"]), tmp_path / "c")
    with pytest.raises(RunDirError, match=rf"ckpt_path={run / 'network.pt'} is a network file, not a training "
                                          rf"checkpoint: to start a new run from its weights use init_from="):
        build(cfg)


def test_check_resume_reads_without_running_code(tmp_path):
    """A checkpoint that needs pickled code to load is refused by name; its payload never runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 1, "x": Payload()}, bad)
    with pytest.raises(ValueError, match=rf"cannot read {bad}: it is not a plain-tensor edmlab file .*nothing in it was run"):
        check_resume(bad, None, 10)
    assert not marker.exists()
