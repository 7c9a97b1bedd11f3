"""The shell's contract (edmlab.infra.jobs and every ``python -m edmlab.*`` tool, edmlab.cli.common): ``--help`` answers
with a usage text and exit code 0; a usage error and a bad input are one line ``error: ...`` on stderr with exit
code 2 (convert's refusal: 1); and a refused run removes the run dir Hydra made for it only when that dir holds
nothing else."""
import json
import os
import re
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


def tool(module: str, *args, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "src/study.py"] if module == "study.py" else [sys.executable, "-m", module]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_search_steps_help_lists_every_option_with_its_default():
    text = tool("edmlab.cli.search_steps", "--help", cwd=ROOT).stdout
    assert text.startswith("usage: python -m edmlab.cli.search_steps [-h] [--solver SOLVER] [--nfe NFE]")
    assert "Searched time steps: the σ grid of one solver and NFE, found on the model itself." in text
    flat = " ".join(text.split())
    for option, default in [("--solver SOLVER", "ipndm"), ("--nfe NFE", "10"), ("--out OUT", "steps.json"),
                            ("--latents LATENTS", "256"), ("--holdout HOLDOUT", "512"), ("--fine FINE", "61"),
                            ("--teacher-substeps TEACHER_SUBSTEPS", "4"), ("--iters ITERS", "300"),
                            ("--seed SEED", "0"), ("--sigma-min SIGMA_MIN", "0.002"),
                            ("--sigma-max SIGMA_MAX", "80.0")]:
        assert re.search(re.escape(option) + r" (?:(?! --).)*?\(default: " + re.escape(default) + r"\)", flat), option
    assert "--final-step {euler,denoise,none} the step to σ = 0 (default: euler, or none where" in flat
    assert "--afs {zero,gaussian,none}" in flat and "--max-order MAX_ORDER" in flat


# A bad input of every tool, found while it runs (not by argparse): (arguments, exit code, what the line names).
# convert refuses with exit code 1 (tests/test_nvlabs_pickle.py and tests/test_safe_loading.py hold it to that).
BAD_INPUTS = {
    "edmlab.cli.convert": (["{tmp}/missing.pkl", "{tmp}/out.pt"], 1, "no network file at {tmp}/missing.pkl; "),
    "edmlab.cli.encode": (["{tmp}/absent", "{tmp}/out.zip", "--vae-path", "{tmp}/novae"], 2,
                          "codec.vae_path={tmp}/novae is not a folder"),
    "edmlab.cli.phema": (["{tmp}/norun", "--std", "0.1"], 2, "no run at {tmp}/norun; pass the run directory"),
    "edmlab.cli.ref_stats": (["--data", "{tmp}/absent", "--dest", "{tmp}/ref.npz"], 2,
                             "{tmp}/absent' is neither 'digits', 'cifar10' nor an existing folder/ZIP of images"),
    "edmlab.cli.search_steps": (["bench:nope", "--nfe", "6"], 2, "unknown bench preset ckpt=bench:nope; choose one "
                                                               "of bench:"),
    "edmlab.cli.study": (["seed=0,1", "--dir", "{tmp}/a_file"], 2, "--dir {tmp}/a_file is a file: give a directory"),
    "edmlab.cli.flows": (["--out", "{tmp}/a_file"], 2, "--out {tmp}/a_file is a file: give a directory"),
    "edmlab.cli.loss_curves": (["{tmp}/nolog"], 2, "no {tmp}/nolog/csv/metrics.csv: Fig. 5a reads the CSV log"),
}


def one_error_line(result: subprocess.CompletedProcess, code: int, names: str) -> None:
    assert result.returncode == code, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr[-2000:]


def test_every_tool_has_a_bad_input_case():
    assert sorted(BAD_INPUTS) == TOOLS


@pytest.mark.parametrize("module", sorted(BAD_INPUTS))
def test_every_tool_reports_a_bad_input_as_one_error_line(module, tmp_path):
    args, code, names = BAD_INPUTS[module]
    (tmp_path / "a_file").write_text("x")
    one_error_line(tool(module, *(a.format(tmp=tmp_path) for a in args), cwd=tmp_path), code,
                   names.format(tmp=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written


@pytest.mark.parametrize("module", TOOLS + ["study.py"])
def test_every_tool_reports_a_usage_error_as_one_error_line_with_exit_2(module, tmp_path):
    prog = "python src/study.py" if module in ("study.py", "edmlab.cli.study") else f"python -m {module}"
    one_error_line(tool(module, "--no-such-option", cwd=ROOT), 2, f"(see {prog} --help)")


def test_a_bad_value_is_named_by_argparse_in_one_line():
    result = tool("edmlab.cli.search_steps", "bench:mixture16", "--nfe", "ten", cwd=ROOT)
    one_error_line(result, 2, "error: argument --nfe: invalid int value: 'ten' (see python -m "
                              "edmlab.cli.search_steps --help)")
    result = tool("edmlab.cli.search_steps", "bench:mixture16", "--final-step", "last", cwd=ROOT)
    one_error_line(result, 2, "argument --final-step: invalid choice: 'last' (choose from 'euler', 'denoise', "
                              "'none')")
    result = tool("edmlab.cli.search_steps", "ckpt=bench:mixture16", "solver=ipndm", cwd=ROOT)
    one_error_line(result, 2, "unrecognized arguments: solver=ipndm")


def test_run_turns_bad_input_into_exit_2_and_passes_an_exit_code_through(capsys):
    from edmlab.cli.common import run

    def refuses(argv):
        raise FileNotFoundError(f"no file {argv[0]}\n  (give an existing one)")

    def breaks(argv):
        raise RuntimeError("a bug")

    assert run(refuses, ["x.pt"]) == 2
    assert capsys.readouterr().err == "error: no file x.pt (give an existing one)\n"
    assert run(lambda argv: 1, []) == 1 and run(lambda argv: {"a": 1}, []) == 0 and run(lambda argv: True, []) == 0
    with pytest.raises(RuntimeError, match="a bug"):  # not bad input: the traceback is kept
        run(breaks, [])


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
