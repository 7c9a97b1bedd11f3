"""The shell's contract (edmlab.infra.jobs and every ``python -m edmlab.*`` tool): ``--help`` answers with a usage text and
exit code 0, and a refused run removes the run dir Hydra made for it only when that dir holds nothing else."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from edmlab.infra.jobs import failure_message, remove_refused_run_dir

TOOLS = sorted(".".join(path.relative_to(ROOT / "src").with_suffix("").parts)
               for path in (ROOT / "src" / "edmlab").rglob("*.py")
               if 'if __name__ == "__main__":' in path.read_text())


def test_the_tools_are_found():
    assert [t for t in TOOLS if not t.startswith("edmlab.cli.")] == []
    assert {"edmlab.cli.search_steps", "edmlab.cli.study", "edmlab.cli.ref_stats", "edmlab.cli.convert",
            "edmlab.cli.phema", "edmlab.cli.flows", "edmlab.cli.loss_curves"} <= set(TOOLS)


@pytest.mark.parametrize("module", TOOLS)
def test_every_tool_answers_help_with_its_usage(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300,
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower(), result.stdout


def test_search_steps_help_lists_its_options_with_their_defaults():
    from edmlab.cli.search_steps import main, usage

    text = usage()
    assert "ckpt=<str>  (required)" in text and "nfe=<int>  (default 10)" in text
    assert "out=<str>  (default steps.json)" in text and "final_step=<str>  (default none)" in text
    assert main(["-h"]) is None


def hydra_run_dir(path, *extra: str):
    """A run dir as Hydra leaves it before the job starts, plus the files named in ``extra``."""
    (path / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (path / ".hydra" / name).write_text("{}\n")
    (path / "train.log").write_text("")
    for name in extra:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("x")
    return path


def test_a_run_dir_of_hydra_files_only_is_removed_with_its_emptied_parents(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = hydra_run_dir(tmp_path / "outputs" / "train" / "t0")
    assert remove_refused_run_dir(run) and not (tmp_path / "outputs").exists()
    other = hydra_run_dir(tmp_path / "outputs" / "eval" / "t1")
    (tmp_path / "outputs" / "eval" / "t2").mkdir()
    assert remove_refused_run_dir(other) and not other.exists() and (tmp_path / "outputs" / "eval" / "t2").is_dir()


def test_the_failure_record_of_the_refused_job_goes_with_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = hydra_run_dir(tmp_path / "run")
    (run / "metrics.json").write_text(json.dumps({"status": "failed", "error": "num_samples=0 must be ..."}))
    assert remove_refused_run_dir(run) and not run.exists()


@pytest.mark.parametrize("extra", ["checkpoints/last.ckpt", "config.yaml", "samples.png", ".hydra/notes.txt",
                                   "metrics.json"])
def test_a_run_dir_holding_anything_else_is_kept_whole(extra, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = hydra_run_dir(tmp_path / "run", extra)
    if extra == "metrics.json":
        (run / extra).write_text(json.dumps({"status": "ok", "fid": 3.0}))
    assert not remove_refused_run_dir(run)
    assert (run / extra).is_file() and (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()


def test_the_working_directory_is_never_removed(tmp_path, monkeypatch):
    run = hydra_run_dir(tmp_path / "here")
    monkeypatch.chdir(run)
    assert not remove_refused_run_dir(run) and not remove_refused_run_dir(tmp_path)
    assert (run / ".hydra").is_dir()


def test_a_failure_is_one_line_with_the_type_unless_it_is_a_refusal():
    from hydra.errors import InstantiationException

    wrapped = InstantiationException("Error in call to target 'x'")
    wrapped.__cause__ = FileNotFoundError("data.dataset.path=nope not found")
    assert failure_message(wrapped) == "data.dataset.path=nope not found"
    assert failure_message(ValueError("optim.lr=-1\n  must be > 0")) == "optim.lr=-1 must be > 0"
    assert failure_message(RuntimeError("CUDA out of memory")) == "RuntimeError: CUDA out of memory"
