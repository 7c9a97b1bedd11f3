"""NVlabs network pickles, written here in their persistence format without NVlabs' code, loaded by edmlab without
running any code from them; bad files refused with one line naming the file and what was expected."""
import copy
import os
import pickle
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import edmlab
from edmlab.io.network_file import build_denoiser
from edmlab.io.nvlabs import UnsafePickleError, read_network_pickle

# NVlabs' class names for edmlab's (the layers share their names).
NVLABS_NAME = {"EDM2Precond": "Precond", "EDM2UNet": "UNet"}
NVLABS_LAYERS = {"Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding", "SongUNet",
                 "DhariwalUNet", "EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "MPFourier", "MPConv", "Block",
                 "UNet", "Precond"}
# Attributes NVlabs' preconditionings keep (training/networks.py, networks_edm2.py), besides img_* and label_dim.
PRECOND_ATTRS = {"EDMPrecond": ("sigma_min", "sigma_max", "sigma_data"), "VPPrecond": ("beta_d", "beta_min", "M",
                 "epsilon_t", "sigma_min", "sigma_max"), "VEPrecond": ("sigma_min", "sigma_max"),
                 "iDDPMPrecond": ("C_1", "C_2", "M", "sigma_min", "sigma_max"), "Precond": ("sigma_data",)}

TOY = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
NETS = {
    "ddpmpp": dict(_target_="edmlab.nets.SongUNet", **TOY),
    "ncsnpp": dict(_target_="edmlab.nets.SongUNet", **TOY, embedding_type="fourier", channel_mult_noise=2,
                   encoder_type="residual", resample_filter=[1, 3, 3, 1]),
    "adm": dict(_target_="edmlab.nets.DhariwalUNet", **TOY),
}
PRECONDS = {"EDMPrecond": dict(sigma_data=0.5, sigma_min=0.0, sigma_max=float("inf")),
            "VPPrecond": dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5),
            "VEPrecond": dict(sigma_min=0.02, sigma_max=100.0), "iDDPMPrecond": dict(C_1=0.001, C_2=0.008, M=1000)}
DATA = dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=4, augment_dim=9)


def toy_spec(precond: str, net: str) -> dict:
    if precond == "Precond":
        network = {"_target_": "edmlab.nets.EDM2UNet", **TOY, "channels_per_head": 16}
        data = {**DATA, "augment_dim": 0}
        precond_spec = {"_target_": "edmlab.EDM2Precond", "sigma_data": 0.5, "logvar_channels": 8}
    else:
        network, data = dict(NETS[net]), dict(DATA)
        precond_spec = {"_target_": f"edmlab.{precond}", **PRECONDS[precond]}
    return {"network": {"_partial_": True, **network}, "network_kwargs": data, "preconditioning": precond_spec,
            "shape": [3, 8, 8]}


def random_denoiser(spec: dict, dtype=torch.float32) -> torch.nn.Module:
    """The denoiser of ``spec`` with every parameter random (an all-zero output layer would hide a wrong load)."""
    torch.manual_seed(0)
    D = build_denoiser(spec).eval()
    with torch.no_grad():
        for p in D.parameters():
            p.copy_((torch.randn_like(p) * 0.2).to(dtype).float())
        for b in D.buffers():
            b.copy_(b.to(dtype).float())
    return D


# --- the writer: NVlabs' persistence format, without NVlabs' code -------------------------------------------------

class Record:
    """Pickles as torch_utils.persistence._reconstruct_persistent_obj(meta), as NVlabs' persistent classes do."""

    def __init__(self, class_name: str, state: dict, module_src: str):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


@contextmanager
def persistence_module():
    """A stand-in torch_utils.persistence while pickling (pickle names the reconstructor by module and name); it is
    gone before anything is loaded, and its reconstructor fails the test if called."""
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        pytest.fail("NVlabs' reconstructor was called")

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj, package.persistence = _reconstruct_persistent_obj, module
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": module})
    try:
        yield
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


def as_nvlabs(module: torch.nn.Module, module_src: str, init_kwargs: dict | None = None, dtype=None,
               rename: dict | None = None):
    """``module`` as NVlabs pickles it: persistent classes as Records of their __dict__ (parameters, buffers,
    submodules, plain attributes, _init_kwargs), torch containers as themselves."""
    rename = rename or {}
    children = OrderedDict((name, None if child is None else as_nvlabs(child, module_src, None, dtype, rename))
                           for name, child in module._modules.items())
    if type(module).__module__.startswith("torch.nn"):
        container = type(module)()
        container._modules.update(children)  # the Records go in as they are, bypassing add_module's type check
        return container
    cast = (lambda t: t if t is None else t.detach().to(dtype)) if dtype else (lambda t: t if t is None else t.detach())
    state = {k: v for k, v in module.__dict__.items() if k.startswith("_") and k not in ("_modules", "_parameters",
                                                                                          "_buffers")}
    state.update(training=False, _parameters=OrderedDict((k, cast(v)) for k, v in module._parameters.items()),
                 _buffers=OrderedDict((k, cast(v)) for k, v in module._buffers.items()), _modules=children,
                 _init_args=(), _init_kwargs=init_kwargs)
    name = NVLABS_NAME.get(type(module).__name__, type(module).__name__)
    assert name in NVLABS_LAYERS, name
    for attr in PRECOND_ATTRS.get(name, ()):
        state[attr] = np.float32(getattr(module, attr)) if attr == "sigma_data" else getattr(module, attr)
    return Record(rename.get(name, name), state, module_src)


def write_snapshot(path, D: torch.nn.Module, spec: dict, marker, dtype=None, rename=None, extra=None):
    """A network-snapshot pickle of NVlabs/edm's (or edm2's, for Precond) training loop around ``D``."""
    poison = f"import pathlib; pathlib.Path({str(marker)!r}).touch(); raise SystemExit('module_src was executed')"
    data, arch = spec["network_kwargs"], {k: v for k, v in spec["network"].items() if not k.startswith("_")}
    edm2 = spec["preconditioning"]["_target_"].endswith("EDM2Precond")
    if edm2:
        net_kwargs = dict(img_resolution=data["img_resolution"], img_channels=data["in_channels"],
                          label_dim=data["label_dim"], **arch)
    else:
        net_kwargs = {**data, "out_channels": D.model.out_channels, **arch}
    with persistence_module():
        ema = as_nvlabs(D, poison, dict(img_resolution=data["img_resolution"], img_channels=data["in_channels"],
                                        label_dim=data["label_dim"], use_fp16=False), dtype, rename)
        ema.meta["state"]["_modules"]["unet" if edm2 else "model"].meta["state"]["_init_kwargs"] = net_kwargs
        ema.meta["state"].update(img_resolution=data["img_resolution"], img_channels=data["in_channels"],
                                 label_dim=data["label_dim"], use_fp16=False)
        loss_fn = Record("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5), poison)
        if edm2:
            encoder = Record("StandardRGBEncoder", dict(init_kwargs={}), poison)
            snapshot = dict(encoder=encoder, dataset_kwargs=dict(path="imagenet-64x64.zip"), loss_fn=loss_fn, ema=ema)
        else:
            snapshot = dict(ema=ema, loss_fn=loss_fn, augment_pipe=Record("AugmentPipe", dict(p=np.float64(0.12)),
                                                                          poison),
                            dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="cifar10.zip"))
        snapshot.update(extra or {})
        path.write_bytes(pickle.dumps(snapshot))
    return path


@pytest.fixture
def marker(tmp_path):
    """A file that the poisoned module_src creates if it ever runs."""
    path = tmp_path / "module_src_ran"
    yield path
    assert not path.exists(), "module_src was executed"
    assert "torch_utils" not in sys.modules


def has_edm2() -> bool:
    try:
        import edmlab.nets.edm2  # noqa: F401
    except ImportError:
        return False
    return True


CASES = [(p, n) for p in PRECONDS for n in NETS] + ([("Precond", "edm2")] if has_edm2() else [])


@pytest.mark.parametrize("precond,net", CASES)
def test_loaded_denoiser_equals_the_one_built_with_the_same_weights(tmp_path, marker, precond, net, one_cpu_thread):
    spec = toy_spec(precond, net)
    edm2 = precond == "Precond"
    D = random_denoiser(spec, torch.float16 if edm2 else torch.float32)  # edm2 snapshots hold float16 weights
    if precond == "iDDPMPrecond":
        D.u.mul_(1 + 1e-4)  # a grid unlike the fresh one: the file's must win
    path = write_snapshot(tmp_path / "network-snapshot-000100.pkl", D, spec, marker,
                          dtype=torch.float16 if edm2 else None)
    loaded = edmlab.load(path)
    assert loaded.model_spec["network"] == spec["network"]
    assert loaded.model_spec["network_kwargs"] == spec["network_kwargs"]
    assert loaded.model_spec["preconditioning"] == spec["preconditioning"]
    assert loaded.model_spec["shape"] == [3, 8, 8] and loaded.model_spec["source"]["class_name"] == precond
    assert loaded.training_config is None
    ours, theirs = D.state_dict(), loaded.state_dict()
    assert list(theirs) == list(ours)
    for key, value in ours.items():
        assert theirs[key].dtype == torch.float32 and torch.equal(theirs[key], value), key
    assert (loaded.sigma_min, loaded.sigma_max) == (D.sigma_min, D.sigma_max)
    g = torch.Generator().manual_seed(1)
    x, sigma = torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0.01, 0.3, 2.0, 60.0])
    labels = torch.eye(4)[[0, 1, 2, 3]]
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels), D(x, sigma, labels))


def test_iddpm_snapshot_keeps_twice_the_channels_and_the_files_grid(tmp_path, marker):
    spec = toy_spec("iDDPMPrecond", "adm")
    D = random_denoiser(spec)
    file_u = D.u * (1 + 1e-4)
    D.u.copy_(file_u)
    loaded = edmlab.load(write_snapshot(tmp_path / "iddpm.pkl", D, spec, marker))
    assert loaded.model.out_channels == 6 and loaded.model_spec["network_kwargs"]["out_channels"] == 3
    assert torch.equal(loaded.u, file_u) and loaded.sigma_max == float(file_u[0])


def test_convert_writes_an_edmlab_network_file(tmp_path, marker, capsys):
    from edmlab.cli.convert import main

    spec = toy_spec("VPPrecond", "ncsnpp")
    D = random_denoiser(spec)
    pkl = write_snapshot(tmp_path / "edm-cifar10-32x32-uncond-vp.pkl", D, spec, marker)
    assert main([str(pkl), str(tmp_path / "out" / "network.pt")]) == 0
    assert "VPPrecond" in capsys.readouterr().out
    converted = edmlab.load(tmp_path / "out" / "network.pt")
    for key, value in D.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    assert converted.model_spec["source"]["file"] == str(pkl)
    assert main([str(tmp_path / "missing.pkl"), str(tmp_path / "x.pt")]) == 1
    assert capsys.readouterr().err.startswith(f"error: no network file at {tmp_path / 'missing.pkl'}; ")
    assert main([str(tmp_path / "out" / "network.pt"), str(tmp_path / "y.pt")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'out' / 'network.pt'} is not an NVlabs network "
                                              f"pickle (*.pkl); an edmlab network.pt or checkpoint needs no conversion")
    assert not (tmp_path / "y.pt").exists()


# --- refusals --------------------------------------------------------------------------------------------------

class Call:
    """Pickles as a call of ``fn(*args)``: what a malicious pickle would ask the loader to run."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_a_global_outside_the_format_is_refused_and_never_called(tmp_path, marker):
    spec = toy_spec("EDMPrecond", "ddpmpp")
    touched = tmp_path / "os_system_ran"
    path = write_snapshot(tmp_path / "evil.pkl", random_denoiser(spec), spec, marker,
                          extra=dict(hook=Call(os.system, f"touch {touched}")))
    with pytest.raises(UnsafePickleError, match=rf"^{path}: refused global posix\.system: an NVlabs network snapshot "
                                                r"holds only persistent NVlabs objects"):
        edmlab.load(path)
    assert not touched.exists()


def test_an_unknown_class_inside_the_network_is_refused(tmp_path, marker):
    spec = toy_spec("EDMPrecond", "ddpmpp")
    path = write_snapshot(tmp_path / "odd.pkl", random_denoiser(spec), spec, marker, rename={"GroupNorm": "MyNorm"})
    with pytest.raises(UnsafePickleError, match=rf"^{path}: the EDMPrecond holds classes \['MyNorm'\] that "
                                                r"NVlabs/edm's networks do not have"):
        read_network_pickle(path)


@pytest.mark.parametrize("kind,match", [
    ("stylegan", r"is not an NVlabs network snapshot: expected a dict whose 'ema' is a "
                 r"EDMPrecond/VPPrecond/VEPrecond/iDDPMPrecond \(NVlabs/edm\) or Precond \(NVlabs/edm2\), found a dict "
                 r"with keys \['D', 'G', 'G_ema', 'augment_pipe'\] \(a StyleGAN generator/discriminator pickle\)"),
    ("classifier", r"is not an NVlabs network snapshot: .* found a EncoderUNetModel object"),
    ("ema_gan", r": 'ema' is a Generator object; expected one of EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond"),
])
def test_gan_and_classifier_pickles_are_refused(tmp_path, marker, kind, match):
    def obj(name):
        return Record(name, dict(_modules=OrderedDict(), _init_kwargs={}), "raise SystemExit")

    with persistence_module():
        content = {"stylegan": lambda: dict(G=obj("Generator"), D=obj("Discriminator"), G_ema=obj("Generator"),
                                            augment_pipe=obj("AugmentPipe")),
                   "classifier": lambda: obj("EncoderUNetModel"),
                   "ema_gan": lambda: dict(ema=obj("Generator"))}[kind]()
        path = tmp_path / f"{kind}.pkl"
        path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=rf"^{path}{match}" if match.startswith(":") else rf"^{path} {match}"):
        edmlab.load(path)


def test_truncated_corrupt_and_missing_files(tmp_path, marker):
    spec = toy_spec("VEPrecond", "ddpmpp")
    good = write_snapshot(tmp_path / "good.pkl", random_denoiser(spec), spec, marker).read_bytes()
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=rf"^{truncated}: truncated or corrupt pickle \(.*\); expected an NVlabs/edm "
                                         r"or edm2 network-snapshot pickle .* download it again$"):
        edmlab.load(truncated)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ValueError, match=rf"^{garbage}: truncated or corrupt pickle"):
        edmlab.load(garbage)
    torch_file = tmp_path / "torch_save.pkl"
    torch.save({"ema": torch.zeros(2)}, torch_file)
    with pytest.raises(ValueError, match=rf"^{torch_file}: truncated or corrupt pickle"):
        edmlab.load(torch_file)
    with pytest.raises(FileNotFoundError, match=r"no network file at .*missing\.pkl"):
        edmlab.load(tmp_path / "missing.pkl")


def test_a_network_keyword_edmlab_does_not_know_is_refused(tmp_path, marker):
    spec = toy_spec("EDMPrecond", "adm")
    D = random_denoiser(spec)
    bad = copy.deepcopy(spec)
    bad["network"]["head_dim"] = 32
    path = write_snapshot(tmp_path / "variant.pkl", D, bad, marker)
    with pytest.raises(ValueError, match=rf"^{path}: the network was built with \['head_dim'\], which edmlab's "
                                         r"DhariwalUNet does not take"):
        edmlab.load(path)


# --- fine-tuning from a pickle: src/train.py init_from= ------------------------------------------------------

def test_train_init_from_a_pickle_starts_from_its_weights(tmp_path, marker, tiny):
    from conftest import compose

    from edmlab.training.run import build, model_spec

    cfg = compose("train", tiny, tmp_path / "run")
    _, module, datamodule = build(cfg)
    spec = model_spec(cfg, datamodule)
    D = random_denoiser(spec)
    path = write_snapshot(tmp_path / "network-snapshot-000500.pkl", D, spec, marker)
    _, module, _ = build(compose("train", [*tiny, f"init_from={path}", "network.dropout=0.3"], tmp_path / "run"))
    for key, value in D.state_dict().items():
        assert torch.equal(module.net.state_dict()[key], value), key
        assert torch.equal(module.ema.state_dict()[key], value), key

    other = {**spec, "shape": [3, 8, 8], "network_kwargs": {**spec["network_kwargs"], "in_channels": 3,
                                                             "out_channels": 3}}
    path = write_snapshot(tmp_path / "rgb.pkl", random_denoiser(other), other, marker)
    with pytest.raises(ValueError, match=rf"^init_from={path} is a network for data of shape \[3, 8, 8\] \(channels, "
                                         r"resolution\), this run's data has shape \[1, 8, 8\]: tune it on data"):
        build(compose("train", [*tiny, f"init_from={path}"], tmp_path / "run"))


# --- NVlabs' Inception detector (metrics.fid.detector=nvlabs) and precision/recall (metrics.prc) ---------------
# (the detector files themselves: tests/test_nvlabs_inception.py)

class ToyDetector(torch.nn.Module):
    """The detector's interface (uint8 [N, 3, H, W] → [N, features] with return_features=True) at toy cost."""

    def __init__(self, features: int = 2048):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, features, 8, stride=8)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.to(torch.float32) / 127.5 - 1, size=[16, 16], mode="bilinear")
        features = self.conv(x).mean(dim=[2, 3])
        return features if return_features else torch.softmax(features, dim=1)


def toy_detector_files(tmp_path, marker, features: int = 2048):
    """(scripted detector, its TorchScript .pt, a persistence pickle carrying the archive as NVlabs' .pkl)."""
    torch.manual_seed(0)
    scripted = torch.jit.script(ToyDetector(features).eval().requires_grad_(False))
    pt = tmp_path / f"inception-{features}.pt"
    torch.jit.save(scripted, str(pt))
    poison = f"import pathlib; pathlib.Path({str(marker)!r}).touch(); raise SystemExit('module_src was executed')"
    with persistence_module():
        record = Record("InceptionV3Detector", dict(_modules=OrderedDict(), archive=pt.read_bytes()), poison)
        pkl = tmp_path / f"inception-{features}.pkl"
        pkl.write_bytes(pickle.dumps(record))
    return scripted, pt, pkl


def test_scores_with_the_nvlabs_detector_precision_recall(tmp_path, marker):
    """Precision and recall of the scoring hook (metrics.prc, features of NVlabs' detector) against torch-fidelity's
    own prc on the same features (an independent implementation of Kynkäänniemi et al. 2019)."""
    from omegaconf import OmegaConf
    from torch_fidelity.metric_prc import prc_features_to_metric

    from edmlab.evaluation.scoring import InceptionScores
    from edmlab.infra.images import to_uint8
    from edmlab.evaluation.metrics.ref_stats import load_uint8_images

    scripted, _, pkl = toy_detector_files(tmp_path, marker)
    mcfg = OmegaConf.create(dict(
        fid=dict(ref=None, weights_path=None, method="sqrtm", batch=64, detector="nvlabs", detector_path=str(pkl)),
        kid=False, isc=False, prc=True, ref_images="digits", ref_root="data", max_ref_images=300))
    scorer = InceptionScores(mcfg, torch.device("cpu"))
    digits = load_uint8_images("digits", max_images=500)
    held_out = digits[300:].float() / 127.5 - 1  # half of them made noise:
    noise = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1  # 0 < precision < 1
    samples = torch.cat([held_out[:100], noise])
    scores = scorer.scores(scorer.outputs(samples), first_range=True)

    real = scripted(digits[:300].repeat(1, 3, 1, 1), return_features=True).double()
    fake = scripted(to_uint8(samples).repeat(1, 3, 1, 1), return_features=True).double()
    prc = prc_features_to_metric(fake, real, prc_neighborhood=3, prc_batch_size=10000, verbose=False)
    assert (scores["precision"], scores["recall"]) == pytest.approx((prc["precision"], prc["recall"]), abs=1e-7)  # theirs: float32
    assert 0 < scores["precision"] < 1 and 0 < scores["recall"] < 1

    with pytest.raises(ValueError, match=r"metrics\.isc=true needs Inception logits, which "
                                         r"metrics\.fid\.detector=nvlabs does not give"):
        InceptionScores(OmegaConf.merge(mcfg, {"isc": True}), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"metrics\.fid\.detector='tf': choose torch-fidelity or nvlabs"):
        InceptionScores(OmegaConf.merge(mcfg, {"fid": {"detector": "tf"}}), torch.device("cpu"))
