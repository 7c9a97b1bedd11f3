"""NVlabs' Inception detector files (metrics.fid.detector=nvlabs) and torch-fidelity's Inception weights file
(metrics.fid.weights_path): every supported form loads and gives the features of the module it was made from; files
of the wrong kind give one line naming the file and what was expected; no pickled code ever runs."""
import email.message
import hashlib
import io
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from test_nvlabs_pickle import (Call, Record, ToyDetector, marker, persistence_module,  # noqa: F401 (fixture)
                                random_denoiser, toy_spec, write_snapshot)
from inception_fixtures import write_detector_pickle, write_random_inception_weights

from edmlab.evaluation.metrics import inception_weights
from edmlab.evaluation.metrics.inception import inception_features
from edmlab.evaluation.metrics.inception_weights import InceptionWeightsMismatchError, verify_weights
from edmlab.evaluation.metrics.nvlabs_inception import DetectorFileError, inspect_detector_file, load_detector, nvlabs_features
from edmlab.io.nvlabs import UnsafePickleError

EXPECTED = (r"expected NVlabs' inception-2015-12-05\.pkl \(https://api\.ngc\.nvidia\.com/.*\) or the TorchScript "
            r"inception-2015-12-05\.pt \(https://nvlabs-fi-cdn\.nvidia\.com/.*\), "
            r"passed as metrics\.fid\.detector_path")
POISON = "import pathlib; pathlib.Path({!r}).touch(); raise SystemExit('module_src was executed')"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A scripted toy detector with NVlabs' interface and its TorchScript archive."""
    torch.manual_seed(0)
    scripted = torch.jit.script(ToyDetector().eval().requires_grad_(False))
    return scripted, _archive(scripted, tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def rgb():
    return torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def write_record(path, state, marker):
    """A persistence pickle of one persistent object with ``state`` and a module_src that marks if it runs."""
    with persistence_module():
        path.write_bytes(pickle.dumps(Record("InceptionV3", state, POISON.format(str(marker)))))
    return path


# Each form: (file writer, where inspect_detector_file finds the archive).
FORMS = {
    "pt": (lambda tmp, archive, marker: _write(tmp / "d.pt", archive), "the file itself"),
    "pkl-bytes": (lambda tmp, archive, marker: write_detector_pickle(archive, tmp / "d.pkl"),
                  "pickle<InceptionV3>['archive']"),
    "pkl-nested-bytearray": (lambda tmp, archive, marker: write_record(tmp / "d.pkl", dict(
        _modules=OrderedDict(net=Record("Inner", dict(blob=[bytearray(archive)]), "")), training=False), marker),
        "pickle<InceptionV3>['_modules']['net']<Inner>['blob'][0]"),
    "pkl-uint8-tensor": (lambda tmp, archive, marker: write_record(tmp / "d.pkl", dict(
        model=torch.frombuffer(bytearray(archive), dtype=torch.uint8)), marker), "pickle<InceptionV3>['model']"),
    "pkl-uint8-numpy": (lambda tmp, archive, marker: write_record(tmp / "d.pkl", dict(
        model=np.frombuffer(archive, dtype=np.uint8)), marker), "pickle<InceptionV3>['model']"),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_detector_form_gives_the_features_of_its_module(tmp_path, marker, toy, rgb, form):
    scripted, archive = toy
    write, where = FORMS[form]
    path = write(tmp_path, archive, marker)
    found = inspect_detector_file(path)
    assert (found.form, found.where) == ("torchscript" if form == "pt" else "pickle", where)
    assert found.archive_sha256 == hashlib.sha256(archive).hexdigest()
    want = scripted(rgb, return_features=True).double()
    assert torch.equal(nvlabs_features(rgb, str(path), batch_size=2), want)
    load_detector.cache_clear()


def test_module_src_is_kept_as_text_and_never_run(tmp_path, marker, toy):
    path = write_record(tmp_path / "d.pkl", dict(archive=toy[1]), marker)
    assert inspect_detector_file(path).module_src == {"InceptionV3": POISON.format(str(marker))}
    load_detector(str(path))
    load_detector.cache_clear()
    assert not marker.exists()


def test_files_that_are_not_the_detector_are_named(tmp_path, marker, toy):
    match = (rf"^metrics\.fid\.detector=nvlabs needs NVlabs' Inception detector, "
             rf"not found at {tmp_path}/inception\.pkl: download https://api\.ngc")
    with pytest.raises(FileNotFoundError, match=match):
        load_detector(str(tmp_path / "inception.pkl"))

    weights = tmp_path / "weights.pth"  # torch-fidelity's weights given as the detector
    torch.save(OrderedDict([("Conv2d_1a_3x3.conv.weight", torch.zeros(2)), ("Mixed_7c.branch_pool.conv.weight",
                                                                            torch.zeros(2))]), weights)
    match = (rf"^{weights}: a torch\.save state dict of 2 entries "
             r"\(Conv2d_1a_3x3\.conv\.weight, Mixed_7c\.branch_pool\.conv\.weight\) — "
             r"torch-fidelity's Inception-v3 weights: pass them as "
             rf"metrics\.fid\.weights_path with metrics\.fid\.detector=torch-fidelity; "
             rf"{EXPECTED}$")
    with pytest.raises(DetectorFileError, match=match):
        load_detector(str(weights))

    dino = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 4), "pos_embed": torch.zeros(1, 2, 4), "blocks.0.attn.qkv.weight":
                torch.zeros(12, 4)}, dino)
    match = (rf"^{dino}: a torch\.save state dict of 3 entries \(cls_token, "
             r"pos_embed, …\) — a vision transformer's weights \(DINOv2\?\), not an "
             rf"Inception network; {EXPECTED}$")
    with pytest.raises(DetectorFileError, match=match):
        load_detector(str(dino))

    spec = toy_spec("EDMPrecond", "ddpmpp")
    network = write_snapshot(tmp_path / "edm.pkl", random_denoiser(spec), spec, marker)
    match = (rf"^{network}: no TorchScript module inside \(persistent objects of "
             r"EDMPrecond, SongUNet, .* in a dict with keys \['ema', 'loss_fn', "
             rf"'augment_pipe', 'dataset_kwargs'\] \(a network snapshot\)\); {EXPECTED}$")
    with pytest.raises(DetectorFileError, match=match):
        load_detector(str(network))

    other = torch.jit.script(ToyDetector(features=8))
    two = write_record(tmp_path / "two.pkl", dict(a=toy[1], b=_archive(other, tmp_path)), marker)
    match = (rf"^{two}: 2 different TorchScript archives inside \(at "
             r"pickle<InceptionV3>\['a'\], pickle<InceptionV3>\['b'\]\), expected one")
    with pytest.raises(DetectorFileError, match=match):
        load_detector(str(two))

    small = tmp_path / "small.pt"
    small.write_bytes(_archive(torch.jit.script(ToyDetector(features=100)), tmp_path))
    match = (rf"^{small}: the detector gives features of shape \(1, 100\) for one "
             r"image, expected \(1, 2048\) \(NVlabs' inception-2015-12-05\)$")
    with pytest.raises(DetectorFileError, match=match):
        load_detector(str(small))

    linear = tmp_path / "linear.pt"
    linear.write_bytes(_archive(torch.jit.script(torch.nn.Linear(3, 3)), tmp_path))
    match = (rf"^{linear}: the TorchScript module \(the file itself\) fails on a "
             r"uint8 image \[1, 3, 32, 32\] with return_features=True \(RuntimeError: "
             rf".*\); {EXPECTED}$")
    with pytest.raises(DetectorFileError, match=match):
        load_detector(str(linear))

    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(write_detector_pickle(toy[1], tmp_path / "full.pkl").read_bytes()[:1000])
    match = (rf"^{truncated}: truncated, corrupt or not a pickle \(.*\); "
             rf"{EXPECTED} — download it again$")
    with pytest.raises(DetectorFileError, match=match):
        load_detector(str(truncated))
    html = tmp_path / "inception-2015-12-05.pkl"
    html.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(DetectorFileError, match=rf"^{html}: truncated, corrupt or not a pickle"):
        load_detector(str(html))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _archive(module, tmp_path) -> bytes:
    path = tmp_path / "archive.tmp"
    torch.jit.save(module, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, marker, toy):
    touched = tmp_path / "os_system_ran"
    path = write_record(tmp_path / "evil.pkl", dict(archive=toy[1], hook=Call(os.system, f"touch {touched}")), marker)
    match = (rf"^{path}: refused global posix\.system: .* edmlab runs no code from "
             rf"a pickle, so this file is not loaded; {EXPECTED}$")
    with pytest.raises(UnsafePickleError, match=match):
        load_detector(str(path))
    assert not touched.exists()
    jit = tmp_path / "jit.pkl"  # a pickle asking torch itself to load TorchScript is refused the same way
    with persistence_module():
        jit.write_bytes(pickle.dumps(Record("InceptionV3", dict(net=Call(torch.jit.load, str(tmp_path / "x.pt"))),
                                            POISON.format(str(marker)))))
    with pytest.raises(UnsafePickleError, match=rf"^{jit}: refused global torch\.jit\._serialization\.load: "):
        load_detector(str(jit))


# --- torch-fidelity's weights file (metrics.fid.weights_path) --------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "random-inception.pth"
    write_random_inception_weights(path, seed=0)
    return path


FIX = (r"download 'weights-inception-2015-12-05-6726825d\.pth' again from https://github\.com/toshas/torch-fidelity/"
       r"releases/download/v0\.2\.0/weights-inception-2015-12-05-6726825d\.pth and pass its path as weights_path$")


def test_weights_under_the_published_name_need_its_checksum(tmp_path, weights, monkeypatch):
    published = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    published.write_bytes(weights.read_bytes())
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert not digest.startswith("6726825d")
    match = (rf"^{published}: SHA-256 {digest} does not start with "
             r"6726825d, the checksum in torch-fidelity's file name "
             rf"\(the file is truncated, corrupt or not torch-fidelity's\); {FIX}")
    with pytest.raises(InceptionWeightsMismatchError, match=match):
        inception_features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), weights_path=published)
    monkeypatch.setattr(inception_weights, "expected_sha256_prefix", lambda: digest[:8])  # as if it were the published file
    assert verify_weights(published) == str(published)
    assert verify_weights(weights) == str(weights)  # another name: the layout alone is checked


def test_the_cached_file_is_checked_too(tmp_path, weights, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(weights.read_bytes()[:-100])
    match = (rf"^{cached}: SHA-256 [0-9a-f]{{64}} does not start with "
             r"6726825d")
    with pytest.raises(InceptionWeightsMismatchError, match=match):
        inception_weights.resolve_weights()


def test_weights_with_the_wrong_layout_are_named(tmp_path, weights, marker):
    state = torch.load(weights, weights_only=True)
    reshaped = dict(state, **{"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 4)})
    torch.save(reshaped, tmp_path / "shape.pth")
    match = (rf"^{tmp_path}/shape\.pth: not torch-fidelity's "
             r"Inception-v3 weights: 1 wrong shapes \(Conv2d_1a_3x3\.conv\."
             r"weight: \(32, 3, 3, 4\), expected \(32, 3, 3, 3\)\); " + FIX)
    with pytest.raises(InceptionWeightsMismatchError, match=match):
        verify_weights(tmp_path / "shape.pth")
    renamed = {k.replace("Mixed_7c.", "Mixed_7x."): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "keys.pth")
    n = sum(k.startswith("Mixed_7c.") for k in state)
    match = (rf"^{tmp_path}/keys\.pth: not torch-fidelity's Inception-v3 "
             rf"weights: {n} of its {len(state)} keys missing \(Mixed_7c\..*"
             rf"\); {n} unexpected keys \(Mixed_7x\..*\); " + FIX)
    with pytest.raises(InceptionWeightsMismatchError, match=match):
        verify_weights(tmp_path / "keys.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    match = (rf"^{tmp_path}/tensor\.pth: holds Tensor, expected "
             r"torch-fidelity's Inception-v3 state dict")
    with pytest.raises(InceptionWeightsMismatchError, match=match):
        verify_weights(tmp_path / "tensor.pth")
    (tmp_path / "page.pth").write_text("<html>404</html>")
    match = (rf"^{tmp_path}/page\.pth: not a state dict that "
             r"torch\.load\(weights_only=True\) reads \(UnpicklingError: ")
    with pytest.raises(InceptionWeightsMismatchError, match=match):
        verify_weights(tmp_path / "page.pth")
    touched = tmp_path / "os_system_ran"
    torch.save({"a": Call(os.system, f"touch {touched}")}, tmp_path / "evil.pth")
    match = (rf"^{tmp_path}/evil\.pth: not a state dict that "
             r"torch\.load\(weights_only=True\) reads")
    with pytest.raises(InceptionWeightsMismatchError, match=match):
        inception_features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), weights_path=tmp_path / "evil.pth")
    assert not touched.exists()


class FakeResponse(io.BytesIO):
    """What torch.hub's download reads from urlopen: a body and its headers."""

    def info(self):
        message = email.message.Message()
        message["Content-Length"] = str(len(self.getvalue()))
        return message


def test_a_download_is_checked_against_the_checksum_in_the_name(tmp_path, weights, monkeypatch):
    """Not cached, network up: edmlab downloads with torch.hub's SHA-256 prefix check (torch-fidelity's own download
    checks nothing), keeps nothing that fails it, and verifies the layout of what it keeps."""
    body = weights.read_bytes()
    requested = []
    monkeypatch.setattr(inception_weights, "_network_reachable", lambda url: True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "urlopen", lambda request: requested.append(request.full_url) or FakeResponse(body))
    digest = hashlib.sha256(body).hexdigest()
    match = (r"^https://github\.com/toshas/torch-fidelity/releases/"
             r"download/v0\.2\.0/weights-inception-2015-12-05-6726825d\.pth"
             rf": the download has an invalid hash value \(expected "
             rf"\"6726825d\", got \"{digest}\"\) and was not kept; ")
    with pytest.raises(InceptionWeightsMismatchError, match=match):
        inception_weights.resolve_weights()
    assert requested == [inception_weights.weights_url()]
    assert os.listdir(tmp_path / "hub" / "checkpoints") == []
    monkeypatch.setattr(inception_weights, "expected_sha256_prefix", lambda: digest[:8])  # as if it were the published file
    cached = inception_weights.resolve_weights()
    assert cached == inception_weights.cached_weights_path() and open(cached, "rb").read() == body
