"""Nothing in a file the project reads is executed: network files, training checkpoints and post-hoc EMA
snapshots are unpickled with ``weights_only=True``, and a ``_target_`` they name is one of edmlab's own classes.

Each entry point (``edmlab.load`` on a file and on a run dir, ``python -m edmlab.cli.convert``, ``python -m
edmlab.cli.phema``, ``src/eval.py ckpt=`` / ``guide=`` / ``ema.std=``, ``src/train.py init_from=``) gets two payloads
built from the real files of one tiny run: (a) a pickle that would create a marker file when unpickled, (b) a
plain-tensor file whose model spec names a callable that would create it when built. The marker never appears
and the error names the file.
"""
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import compose, run_script, train_tiny_run

import edmlab
from edmlab.io import snapshots
from edmlab.infra.spec import FILE_TARGETS, build

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

EVAL = ["num_samples=4", "sampler.num_steps=2", "logger=none", "grid_images=0", "save=npz", "metrics.dataset=false"]


class Touch:
    """Unpickled without ``weights_only``, this calls ``pathlib.Path(marker).touch()``: the stand-in for any code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def touching_spec(marker: pathlib.Path) -> dict:
    """A spec whose build creates ``marker``: ``logging.basicConfig`` opens its ``filename`` before it refuses the
    keywords it does not know (the data's, ``model=``)."""
    return {"_target_": "logging.basicConfig", "force": True, "filename": str(marker)}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> pathlib.Path:
    """A tiny ema=power run by the real entry point: network.pt, checkpoints/last.ckpt and two phema snapshots."""
    return train_tiny_run(tmp_path_factory.mktemp("train"), "network.model_channels=8", "network.channel_mult=[1]",
                          "duration_kimg=0.064", "ema=power", "ema.snapshot_kimg=0.032",
                          "callbacks.final_report.num_samples=4", "sampler.num_steps=2")


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload_ran"
    yield path
    assert not path.exists(), "a payload read from a file was executed"


def plain(path: pathlib.Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def spec_of(blob: dict) -> dict:
    """The model spec inside a network file, a snapshot or a training checkpoint."""
    return blob["edmlab"]["model"] if "edmlab" in blob else blob["model"]


def pickled(source: pathlib.Path, dest: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    """Payload (a): ``source``'s content with a ``Touch`` in its config, saved by ``torch.save`` as ``dest``."""
    blob = plain(source)
    (blob["edmlab"] if "edmlab" in blob else blob)["config"] = Touch(marker)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, dest)
    return dest


def targeted(source: pathlib.Path, dest: pathlib.Path, marker: pathlib.Path, role: str = "preconditioning",
             target: str | None = None) -> pathlib.Path:
    """Payload (b): ``source`` with its ``role`` spec replaced by ``touching_spec`` (or one naming ``target``);
    it loads with ``weights_only=True``."""
    blob = plain(source)
    spec_of(blob)[role] = touching_spec(marker) if target is None else {"_target_": target, "_partial_": True}
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, dest)
    assert plain(dest)
    return dest


def refused_pickle(path) -> str:
    """The error for payload (a): the globals it names (``Touch``'s ``pathlib.Path.touch``), none of them run."""
    return rf"^cannot read {re.escape(str(path))}: it is not a plain-tensor edmlab file \(it names [\w., ]*" \
           r"pathlib\.Path\b[\w., ]*\); nothing in it was run\. Expected "


def refused_target(path, target="logging.basicConfig", role="preconditioning") -> str:
    allowed = re.escape(", ".join(FILE_TARGETS[role]))
    return rf"^{re.escape(str(path))}: its {role} _target_ '{re.escape(target)}' is not one of edmlab's own " \
           rf"\({allowed}\); a file may name only those, and nothing it names was imported or run$"


def one_error_line(result: subprocess.CompletedProcess, match: str, code: int) -> None:
    """A command ended with exit ``code`` and one stderr line, ``error: `` + ``match``."""
    assert result.returncode == code, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(match.replace("^", "^error: ", 1), lines[0]), result.stderr[-2000:]


def python_m(module: str, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


# --- the payloads are live: what the guards stop would run -------------------------------------------------------

def test_the_payloads_would_run_without_the_guards(run, tmp_path):
    ran = tmp_path / "ran"
    torch.load(pickled(run / "network.pt", tmp_path / "x.pt", ran), map_location="cpu", weights_only=False)
    assert ran.is_file()
    ran.unlink()
    # a spec of the user's own config resolves any dotted path (as Hydra does): the touching spec runs there
    code = f"from edmlab.io.network_file import build; build({touching_spec(ran)!r}, model=None)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "Unrecognised argument(s): model" in result.stderr and ran.is_file()


def test_own_files_load_with_weights_only(run):
    """Every format edmlab writes is plain tensors and containers."""
    for path in (run / "network.pt", run / "checkpoints" / "last.ckpt", *sorted((run / "phema").glob("*.pt"))):
        assert isinstance(plain(path), dict), path
    assert edmlab.load(run / "checkpoints" / "last.ckpt").model_spec == edmlab.load(run).model_spec


# --- edmlab.load: a network file, a checkpoint, a run dir ------------------------------------------------------

@pytest.mark.parametrize("name", ["x.pt", "checkpoints/last.ckpt"])
def test_load_refuses_a_pickle_payload(run, tmp_path, marker, name):
    source = run / "network.pt" if name == "x.pt" else run / "checkpoints" / "last.ckpt"
    path = pickled(source, tmp_path / name, marker)
    with pytest.raises(ValueError, match=refused_pickle(path)):
        edmlab.load(path)


@pytest.mark.parametrize("role,target", [("preconditioning", None), ("network", "os.system"),
                                         ("network", "builtins.exec"), ("preconditioning", "pathlib.Path.touch"),
                                         ("network", "edmlab.io.network_file.build")])
def test_load_refuses_a_target_outside_edmlab(run, tmp_path, marker, role, target):
    path = targeted(run / "network.pt", tmp_path / "x.pt", marker, role, target)
    with pytest.raises(ValueError, match=refused_target(path, target or "logging.basicConfig", role)):
        edmlab.load(path)


def test_load_of_a_run_dir_refuses_both_payloads(run, tmp_path, marker):
    pickled(run / "checkpoints" / "last.ckpt", tmp_path / "a" / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(ValueError, match=refused_pickle(tmp_path / "a" / "checkpoints" / "last.ckpt")):
        edmlab.load(tmp_path / "a")
    targeted(run / "network.pt", tmp_path / "b" / "network.pt", marker)
    with pytest.raises(ValueError, match=refused_target(tmp_path / "b" / "network.pt")):
        edmlab.load(tmp_path / "b")


def test_a_nested_target_is_refused(run, tmp_path, marker):
    """Hydra's instantiate would build a ``_target_`` nested in a spec's values; a file's specs are flat."""
    blob = plain(run / "network.pt")
    blob["model"]["preconditioning"]["sigma_data"] = touching_spec(marker)
    torch.save(blob, tmp_path / "x.pt")
    path = re.escape(str(tmp_path / "x.pt"))
    with pytest.raises(ValueError, match=rf"^{path}: its preconditioning spec nests a _target_ 'logging\.basicConfig'; "
                                         r"a file's specs are flat"):
        edmlab.load(tmp_path / "x.pt")


def test_a_user_config_spec_still_resolves_any_dotted_path():
    """Specs composed from conf/ (loss weighting, noise distribution, augment) are the user's own code."""
    assert build({"_target_": "fractions.Fraction", "numerator": 3, "denominator": 6}) == 0.5


# --- python -m edmlab.cli.convert, python -m edmlab.cli.phema ----------------------------------------------------------

def test_convert_refuses_both_payloads(run, tmp_path, marker):
    """convert reads only NVlabs pickles (through the restricted unpickler); a payload under any other name is
    refused before it is opened."""
    for payload, name in ((pickled, "x.pt"), (targeted, "y.pt")):
        path = payload(run / "network.pt", tmp_path / name, marker)
        one_error_line(python_m("edmlab.cli.convert", path, tmp_path / "out.pt", cwd=tmp_path),
                       re.escape(f"{path} is not an NVlabs network pickle (*.pkl)"), 1)
    path = pickled(run / "network.pt", tmp_path / "z.pkl", marker)
    result = python_m("edmlab.cli.convert", path, tmp_path / "out.pt", cwd=tmp_path)
    assert result.returncode == 1 and str(path) in result.stderr and not marker.exists()
    assert not (tmp_path / "out.pt").exists()


def snapshots_with(run: pathlib.Path, tmp_path: pathlib.Path, payload, marker) -> tuple[pathlib.Path, pathlib.Path]:
    """(a copy of the run's snapshot folder whose last snapshot is ``payload``'d, that snapshot's path)."""
    folder = tmp_path / "run" / "phema"
    shutil.copytree(run / "phema", folder)
    last = sorted(folder.glob("snapshot-*.pt"))[-1]
    return tmp_path / "run", payload(last, last, marker)


@pytest.mark.parametrize("payload", [pickled, targeted])
def test_phema_refuses_a_payload_snapshot(run, tmp_path, marker, payload):
    run_dir, snapshot = snapshots_with(run, tmp_path, payload, marker)
    match = refused_pickle(snapshot) if payload is pickled else refused_target(snapshot)
    one_error_line(python_m("edmlab.cli.phema", run_dir, "--std", "0.07", cwd=tmp_path), match, 2)
    assert not list(run_dir.glob("network-phema-*.pt"))
    with pytest.raises(ValueError, match=match):
        snapshots.load_reconstructed(run_dir, 0.07)


# --- src/eval.py ckpt= guide= ema.std= -------------------------------------------------------------------------

@pytest.mark.parametrize("payload", ["pickle", "target", "dataset"])
def test_eval_ckpt_refuses_a_payload(run, tmp_path, marker, payload):
    if payload == "pickle":
        path = pickled(run / "checkpoints" / "last.ckpt", tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
        match = refused_pickle(path)
    elif payload == "target":
        path = targeted(run / "network.pt", tmp_path / "run" / "network.pt", marker)
        match = refused_target(path)
    else:  # the data set of the training config, rebuilt for the metrics: flat, edmlab's own only
        blob = plain(run / "network.pt")
        blob["config"]["data"]["dataset"]["split"] = touching_spec(marker)
        path = tmp_path / "run" / "network.pt"
        path.parent.mkdir()
        torch.save(blob, path)
        match = rf"^{re.escape(str(path))}: its data set spec nests a _target_ 'logging\.basicConfig'; a file's " \
                r"specs are flat"
    one_error_line(run_script("eval.py", [f"ckpt={tmp_path / 'run'}", *EVAL], tmp_path), match, 2)


def test_eval_guide_refuses_a_payload(run, tmp_path, marker):
    path = pickled(run / "network.pt", tmp_path / "guide.pt", marker)
    one_error_line(run_script("eval.py", [f"ckpt={run}", f"guide={path}", "guidance=2", *EVAL], tmp_path),
                   refused_pickle(path), 2)


@pytest.mark.parametrize("payload", [pickled, targeted])
def test_eval_ema_std_refuses_a_payload_snapshot(run, tmp_path, marker, payload):
    from edmlab.evaluation import evaluate

    run_dir, snapshot = snapshots_with(run, tmp_path, payload, marker)
    match = refused_pickle(snapshot) if payload is pickled else refused_target(snapshot)
    with pytest.raises(ValueError, match=match):
        evaluate(compose("eval", [f"ckpt={run_dir}", "ema.std=0.07", *EVAL], tmp_path / "eval"))


# --- src/train.py init_from= -----------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [pickled, targeted])
def test_init_from_refuses_a_payload(run, tmp_path, marker, payload):
    from edmlab.training.run import build as build_run

    path = payload(run / "network.pt", tmp_path / "x.pt", marker)
    match = refused_pickle(path) if payload is pickled else refused_target(path)
    overrides = ["network.model_channels=8", "network.channel_mult=[1]", "trainer.accelerator=cpu", "logger=none",
                 "callbacks=none", f"init_from={path}"]
    with pytest.raises(ValueError, match=match):
        build_run(compose("train", overrides, tmp_path / "train"))

