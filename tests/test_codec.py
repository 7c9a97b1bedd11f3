"""The codec group (edmlab.codec: pixels, sd_vae), latent data sets in NVlabs/edm2's layout (edmlab.data.latents),
``python -m edmlab.cli.encode`` and the ``encoder`` of edm2 img512 pickles (edmlab.io.nvlabs.encoders), on a tiny
random diffusers ``AutoencoderKL`` saved to a temp folder: no download, no edm2 code."""
import io
import json
import pickle
import sys
import types
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from edmlab.codec import build_codec
from edmlab.codec.pixels import PixelCodec
from edmlab.codec.sd_vae import SDVAECodec
from edmlab.data.latents import LatentDataset
from edmlab.infra.images import to_uint8

diffusers = pytest.importorskip("diffusers")

# NVlabs/edm2 training/encoders.py StabilityVAEEncoder, transcribed: its defaults and its float32 constants.
EDM2_RAW_MEAN, EDM2_RAW_STD = [5.81, 3.25, 0.12, -2.15], [4.17, 4.62, 3.71, 3.28]


def edm2_constants(raw_mean=EDM2_RAW_MEAN, raw_std=EDM2_RAW_STD, final_mean=0, final_std=0.5):
    scale = np.float32(final_std) / np.float32(raw_std)
    return scale, np.float32(final_mean) - np.float32(raw_mean) * scale


def tiny_vae_config(**changes) -> dict:
    """An 8× AutoencoderKL like sd-vae-ft-mse (four blocks), 8 channels wide: 64×64 RGB → 4×8×8 latents."""
    return {**dict(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4, latent_channels=4,
                   sample_size=64), **changes}


def save_vae(folder, **changes):
    torch.manual_seed(0)
    diffusers.AutoencoderKL(**tiny_vae_config(**changes)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_vae(tmp_path_factory.mktemp("vae"))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n=3, seed=0, size=64) -> torch.Tensor:
    """uint8 [n, 3, size, size]: random 8×8 pictures upsampled (nearest), as small data sets look."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return small.repeat_interleave(size // 8, dim=2).repeat_interleave(size // 8, dim=3)


def reference_vae(vae_dir):
    return diffusers.AutoencoderKL.from_pretrained(vae_dir, local_files_only=True, use_safetensors=True,
                                                   low_cpu_mem_usage=False).eval()


# --- the codec -----------------------------------------------------------------------------------------------------

def test_encode_gives_the_vae_posterior_of_unit_range_pixels_and_decode_uint8(vae_dir):
    codec = build_codec({"name": "sd_vae", "vae_path": str(vae_dir)})
    x = images()
    moments = codec.encode(x)
    assert moments.shape == (3, 8, 8, 8) and moments.dtype == torch.float32
    with torch.no_grad():
        posterior = reference_vae(vae_dir).encode(x.float() / 255).latent_dist
    torch.testing.assert_close(moments, torch.cat([posterior.mean, posterior.std], 1), rtol=0, atol=1e-6)
    assert (moments[:, 4:] > 0).all()
    assert codec.latent_shape(moments.shape[1:]) == (4, 8, 8) and codec.moments_shape((3, 64, 64)) == (8, 8, 8)
    # [−1, 1] floats are the same pixels: (x + 1)/2 = u/255 up to rounding.
    torch.testing.assert_close(codec.encode(x.float() / 127.5 - 1), moments, rtol=0, atol=1e-5)
    out = codec.decode(codec.sample(moments, torch.Generator().manual_seed(0)))
    assert out.shape == (3, 3, 64, 64) and out.dtype == torch.uint8 and 0 < out.float().std()
    pixels = codec.to_pixels(codec.sample(moments, torch.Generator().manual_seed(0)))
    assert pixels.dtype == torch.float32 and pixels.min() >= -1 and pixels.max() <= 1
    assert torch.equal(to_uint8(pixels), out)  # edmlab's pixel pipeline gets decode's uint8 back


def test_sample_and_decode_follow_edm2s_normalisation(vae_dir):
    codec = SDVAECodec(vae_dir)
    scale, bias = edm2_constants()
    assert np.array_equal(codec.scale, scale) and np.array_equal(codec.bias, bias)
    np.testing.assert_allclose(scale, [0.11990, 0.10823, 0.13477, 0.15244], atol=5e-6)  # ../shared/reference
    np.testing.assert_allclose(bias, [-0.69664, -0.35173, -0.01617, 0.32774], atol=5e-6)
    moments = codec.encode(images())
    mean, std = moments.chunk(2, dim=1)
    torch.manual_seed(7)
    eps = torch.randn_like(mean)  # EDM2's draw: randn_like, in the memory order of the VAE's output
    expected = (mean + eps * std) * torch.from_numpy(scale).view(1, -1, 1, 1) + torch.from_numpy(bias).view(1, -1, 1, 1)
    latents = codec.sample(moments, torch.Generator().manual_seed(7))
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    torch.manual_seed(7)
    torch.testing.assert_close(codec.sample(moments), expected, rtol=0, atol=0)  # torch's global generator
    raw = (latents - torch.from_numpy(bias).view(1, -1, 1, 1)) / torch.from_numpy(scale).view(1, -1, 1, 1)
    with torch.no_grad():
        decoded = reference_vae(vae_dir).decode(raw).sample
    expected_images = decoded.clamp(0, 1).mul(255).to(torch.uint8)
    assert (codec.decode(latents).int() - expected_images.int()).abs().max() <= 1  # float rounding at a level
    other = SDVAECodec(vae_dir, raw_mean=[0, 0, 0, 0], raw_std=[1, 2, 4, 8], final_mean=0.25, final_std=1.0)
    assert other.scale.tolist() == [1.0, 0.5, 0.25, 0.125] and other.bias.tolist() == [0.25] * 4


def test_sampling_is_determined_by_the_seed(vae_dir):
    codec = SDVAECodec(vae_dir)
    moments = codec.encode(images())
    a = codec.sample(moments, torch.Generator().manual_seed(1))
    assert torch.equal(a, codec.sample(moments, torch.Generator().manual_seed(1)))
    assert not torch.allclose(a, codec.sample(moments, torch.Generator().manual_seed(2)))

    class Streams:  # edmlab.sampling.rng.SeedStreams' interface: one stream per row
        def randn(self, shape):
            return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in (5, 6, 7)])

    b = codec.sample(moments, Streams())
    assert torch.equal(b[1:2], codec.sample(moments[1:2], types.SimpleNamespace(
        randn=lambda shape: torch.randn([1, *shape], generator=torch.Generator().manual_seed(6)))))


def test_batching_and_precision(vae_dir):
    x = images(5)
    one, many = SDVAECodec(vae_dir, batch_size=1), SDVAECodec(vae_dir, batch_size=8)
    torch.testing.assert_close(one.encode(x), many.encode(x), rtol=0, atol=1e-5)
    half = SDVAECodec(vae_dir, dtype="bfloat16")
    moments = half.encode(x)
    assert moments.dtype == torch.float32 and next(half.vae.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(moments, many.encode(x), rtol=0.05, atol=0.05)
    assert half.settings()["dtype"] == "bfloat16"


def test_the_pixel_codec_is_todays_behaviour():
    codec = build_codec(None)
    assert isinstance(codec, PixelCodec) and codec.latent_shape((3, 32, 32)) == (3, 32, 32)
    x = images(2, size=16)
    signed = codec.encode(x)
    torch.testing.assert_close(signed, x.float() / 127.5 - 1)
    assert torch.equal(codec.sample(signed, torch.Generator().manual_seed(0)), signed)
    assert torch.equal(codec.decode(signed), x) and torch.equal(codec.to_pixels(signed), signed)


# --- latent data sets ----------------------------------------------------------------------------------------------

def write_edm2_latents(dest, arrays, labels=None, as_zip=False):
    """arrays as NVlabs/edm2's dataset_tool.py encode writes them (np.save of [8, H, W] float32, EDM2 names)."""
    files = {}
    for i, a in enumerate(arrays):
        f = io.BytesIO()
        np.save(f, a)
        files[f"{i // 1000:05d}/img-mean-std-{i:08d}.npy"] = f.getvalue()
    names = list(files)
    files["dataset.json"] = json.dumps({"labels": None if labels is None else [[n, l] for n, l in zip(names, labels)]})
    if as_zip:
        with zipfile.ZipFile(dest, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        for name, data in files.items():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return dest


@pytest.mark.parametrize("as_zip", [False, True])
def test_an_edm2_latent_data_set_reads_back(tmp_path, as_zip):
    arrays = [np.random.default_rng(i).standard_normal((8, 8, 8)).astype(np.float32) for i in range(3)]
    path = write_edm2_latents(tmp_path / ("set.zip" if as_zip else ""), arrays, [2, 0, 1], as_zip)
    data = LatentDataset(path, channels=8, resolution=8)
    assert len(data) == 3 and data.shape == (8, 8, 8) and data.latent_shape == (4, 8, 8) and data.num_classes == 3
    x, label = data[2]
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(arrays[2])) and int(label) == 1
    assert [int(data[i][1]) for i in range(3)] == [2, 0, 1]
    assert pickle.loads(pickle.dumps(data))[0][0].shape == (8, 8, 8)
    assert len(LatentDataset(path, max_size=2)) == 2


# --- the encode tool -----------------------------------------------------------------------------------------------

def write_images(folder, x, labels=None):
    for i, image in enumerate(x):
        (folder / "00000").mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"00000/img{i:08d}.png")
    if labels is not None:
        (folder / "dataset.json").write_text(json.dumps(
            {"labels": [[f"00000/img{i:08d}.png", label] for i, label in enumerate(labels)]}))
    return folder


def test_encode_cli_writes_edm2s_layout_and_resumes(tmp_path, vae_dir, capsys):
    from edmlab.cli.encode import main

    x = images(5)
    source = write_images(tmp_path / "img", x, [3, 1, 4, 1, 5])
    dest = main([str(source), str(tmp_path / "lat.zip"), "--vae-path", str(vae_dir), "--batch", "2",
                 "--device", "cpu"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shape"] == [8, 8, 8]
    assert not (tmp_path / "lat.zip.partial").exists()
    names = zipfile.ZipFile(dest).namelist()
    assert sorted(names) == ["00000/img-mean-std-0000000%d.npy" % i for i in range(5)] + ["dataset.json"]
    data = LatentDataset(dest, channels=8)
    expected = SDVAECodec(vae_dir).encode(x)
    torch.testing.assert_close(torch.stack([data[i][0] for i in range(5)]), expected, rtol=0, atol=1e-5)
    assert [int(data[i][1]) for i in range(5)] == [3, 1, 4, 1, 5]

    folder = tmp_path / "lat"
    main([str(source), str(folder), "--vae-path", str(vae_dir), "--max-images", "4", "--device", "cpu"])
    assert len(LatentDataset(folder)) == 4
    (folder / "dataset.json").unlink()
    (folder / "00000/img-mean-std-00000002.npy").unlink()
    kept = (folder / "00000/img-mean-std-00000001.npy").stat().st_mtime_ns
    main([str(source), str(folder), "--vae-path", str(vae_dir), "--max-images", "4", "--device", "cpu"])
    assert (folder / "00000/img-mean-std-00000001.npy").stat().st_mtime_ns == kept  # not encoded again
    torch.testing.assert_close(LatentDataset(folder)[2][0], expected[2], rtol=0, atol=1e-5)


# --- edm2 img512 pickles -------------------------------------------------------------------------------------------

class Record:
    """Pickles as torch_utils.persistence._reconstruct_persistent_obj(meta), as NVlabs' persistent classes do."""

    def __init__(self, class_name, state):
        self.meta = dict(type="class", version=6, module_src="raise SystemExit('module_src ran')",
                         class_name=class_name, state=state)

    def __reduce__(self):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


def write_img512_snapshot(path, init_kwargs=None, **state):
    """What edm2's training loop pickles for an img512 run: dict(encoder, dataset_kwargs, loss_fn, ema), the encoder
    a StabilityVAEEncoder's __dict__ (its VAE not pickled), written with a stand-in torch_utils.persistence."""
    scale, bias = edm2_constants(**(init_kwargs or {}))
    encoder = dict(_init_args=(), _init_kwargs=init_kwargs or {}, vae_name="stabilityai/sd-vae-ft-mse",
                   scale=scale, bias=bias, batch_size=8, _vae=None)
    encoder.update(state)
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("called")

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj, package.persistence = _reconstruct_persistent_obj, module
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": module})
    try:
        snapshot = dict(encoder=Record("StabilityVAEEncoder", encoder),
                        dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="img512-sd.zip"),
                        loss_fn=Record("EDM2Loss", dict(P_mean=-0.4, P_std=1.0, sigma_data=0.5)),
                        ema=Record("Precond", dict(img_resolution=64, img_channels=4, label_dim=1000)))
        path.write_bytes(pickle.dumps(snapshot))
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]
    return path


def test_an_img512_pickles_encoder_maps_onto_codec_sd_vae(tmp_path, vae_dir):
    from edmlab.io.nvlabs.encoders import codec_settings, pickle_codec
    from edmlab.io.nvlabs.networks import _encoder
    from edmlab.io.nvlabs.unpickler import Persistent, read_pickle

    path = write_img512_snapshot(tmp_path / "edm2-img512-s-2147483-0.130.pkl")
    file = read_pickle(path)
    assert "torch_utils" not in sys.modules
    settings = codec_settings(file["encoder"], path)
    assert settings == dict(name="sd_vae", vae_path=None, raw_mean=EDM2_RAW_MEAN, raw_std=EDM2_RAW_STD,
                            final_mean=0.0, final_std=0.5, batch_size=8, vae_name="stabilityai/sd-vae-ft-mse")
    assert codec_settings(_encoder(file), path) == settings  # the summary read_network_pickle puts in its spec
    codec = pickle_codec(file["encoder"], path, vae_path=vae_dir, batch_size=2)
    assert isinstance(codec, SDVAECodec) and codec.batch_size == 2
    assert np.array_equal(codec.scale, file["encoder"].state["scale"])
    assert np.array_equal(codec.bias, file["encoder"].state["bias"])

    custom = read_pickle(write_img512_snapshot(tmp_path / "b.pkl", init_kwargs=dict(final_std=1.0)))
    assert codec_settings(custom["encoder"], "b.pkl")["final_std"] == 1.0
    scale, bias = edm2_constants([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 4.0, 4.0])  # keywords not recorded: solved
    solved = codec_settings(read_pickle(write_img512_snapshot(tmp_path / "c.pkl", scale=scale, bias=bias))["encoder"],
                            "c.pkl")
    np.testing.assert_allclose(solved["raw_mean"], [1, 2, 3, 4], rtol=1e-6)
    np.testing.assert_allclose(solved["raw_std"], [2, 2, 4, 4], rtol=1e-6)
    rebuilt = pickle_codec(read_pickle(tmp_path / "c.pkl")["encoder"], "c.pkl", vae_path=vae_dir)
    np.testing.assert_allclose(rebuilt.scale, scale, rtol=1e-6)
    np.testing.assert_allclose(rebuilt.bias, bias, atol=1e-6)
    assert codec_settings(None, path) == {"name": "pixels"}
    assert codec_settings(Persistent("StandardRGBEncoder", {}), path) == {"name": "pixels"}


# --- bad input: one line naming the file and what was expected ------------------------------------------------------

def test_a_vae_folder_that_is_missing_or_of_another_kind(tmp_path, vae_dir):
    with pytest.raises(ValueError, match=r"^codec=sd_vae needs codec.vae_path: a local folder with config.json \+ "
                                         r"diffusion_pytorch_model.safetensors"):
        SDVAECodec(None)
    with pytest.raises(FileNotFoundError, match=rf"^codec.vae_path={tmp_path}/none is not a folder; expected"):
        SDVAECodec(tmp_path / "none")
    (tmp_path / "half").mkdir()
    (tmp_path / "half/config.json").write_text((vae_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"half lacks diffusion_pytorch_model.safetensors; expected a local"):
        SDVAECodec(tmp_path / "half")
    unet = save_vae(tmp_path / "unet")
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match=r"unet/config.json describes a 'UNet2DModel', not an AutoencoderKL"):
        SDVAECodec(unet)
    wide = save_vae(tmp_path / "wide", latent_channels=16)
    with pytest.raises(ValueError, match=r"wide/config.json: latent_channels=16, but codec.raw_mean/raw_std have 4 "
                                         r"entries"):
        SDVAECodec(wide)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/config.json").write_text("{")
    (tmp_path / "broken/diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"broken/config.json is not JSON"):
        SDVAECodec(tmp_path / "broken")
    garbage = save_vae(tmp_path / "garbage")
    (garbage / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"garbage/diffusion_pytorch_model.safetensors does not load as the "
                                         r"AutoencoderKL of .*garbage/config.json"):
        SDVAECodec(garbage).encode(images(1))
    with pytest.raises(ValueError, match=r"^codec.dtype='float8' is not one of float32, float16, bfloat16$"):
        SDVAECodec(vae_dir, dtype="float8")
    with pytest.raises(ValueError, match=r"^codec='taesd' is not one of pixels, sd_vae$"):
        build_codec({"name": "taesd"})


def test_data_that_does_not_fit_the_codec(tmp_path, vae_dir):
    codec = SDVAECodec(vae_dir)
    pixels = write_images(tmp_path / "pixels", images(2))
    with pytest.raises(ValueError, match=r"pixels holds 2 images but no .npy latents; encode it first: python -m "
                                         r"edmlab.cli.encode"):
        LatentDataset(pixels)
    with pytest.raises(ValueError, match=r"^data holds 3-channel images, which were never encoded; codec=sd_vae trains"
                                         r" on the 8-channel moments"):
        codec.check_data((3, 64, 64), "data")
    six = write_edm2_latents(tmp_path / "six.zip", [np.zeros((6, 8, 8), np.float32)], as_zip=True)
    with pytest.raises(ValueError, match=r"^00000/img-mean-std-00000000.npy in .*six.zip has 6 channels \(mean and std "
                                         r"of 3 latent channels\); expected 8"):
        LatentDataset(six, channels=8)
    with pytest.raises(ValueError, match=r"holds 6-channel latents; codec=sd_vae with 4 latent channels expects 8"):
        codec.check_data(LatentDataset(six).shape, six)
    with pytest.raises(ValueError, match=r"six.zip holds 6-channel items, which look like the moments of a latent "
                                         r"data set; train on them with codec=sd_vae"):
        PixelCodec().check_data(LatentDataset(six).shape, six)
    PixelCodec().check_data((3, 32, 32), "cifar10")
    codec.check_data((8, 64, 64), "img512-sd.zip")
    objects = tmp_path / "objects"
    (objects / "00000").mkdir(parents=True)
    np.save(objects / "00000/img-mean-std-00000000.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects/00000/img-mean-std-00000000.npy is a object array of shape \(1,\); "
                                         r"expected float32 moments"):
        LatentDataset(objects)
    (objects / "00000/img-mean-std-00000000.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"^Corrupt or unreadable array .*objects/00000/img-mean-std-00000000.npy"):
        LatentDataset(objects)
    with pytest.raises(ValueError, match=r"codec=sd_vae samples from moments \[N, 8, H, W\], got shape \(1, 4, 8, 8\)"):
        codec.sample(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"codec=sd_vae encodes RGB images \[N, 3, H, W\], got shape \(1, 1, 64, 64\)"):
        codec.encode(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))


def test_an_img512_pickle_without_vae_path_or_with_a_strange_encoder(tmp_path):
    from edmlab.io.nvlabs.encoders import codec_settings, pickle_codec
    from edmlab.io.nvlabs.unpickler import Persistent, read_pickle

    path = write_img512_snapshot(tmp_path / "edm2-img512-xs.pkl")
    encoder = read_pickle(path)["encoder"]
    with pytest.raises(ValueError, match=rf"^{path} generates latents of the VAE stabilityai/sd-vae-ft-mse \(a "
                                         rf"StabilityVAEEncoder\), which need decoding: set codec.vae_path=<local "
                                         rf"folder with config.json \+ diffusion_pytorch_model.safetensors"):
        pickle_codec(encoder, path)
    with pytest.raises(ValueError, match=rf"^{path}: its encoder is a TAESDEncoder; edmlab maps only"):
        codec_settings(Persistent("TAESDEncoder", {}), path)
    bad = read_pickle(write_img512_snapshot(tmp_path / "bad.pkl", scale=np.float32([1, -1, 1, 1])))["encoder"]
    with pytest.raises(ValueError, match=r"bad.pkl: the StabilityVAEEncoder's scale is .*; expected a float32 vector "
                                         r"of one positive value per latent channel"):
        codec_settings(bad, tmp_path / "bad.pkl")


def test_encode_cli_bad_input_is_one_line_before_anything_is_written(tmp_path, vae_dir, capsys):
    from edmlab.cli.common import run
    from edmlab.cli.encode import main

    grey = tmp_path / "grey"
    (grey / "00000").mkdir(parents=True)
    PIL.Image.fromarray(np.zeros((64, 64), np.uint8)).save(grey / "00000/img00000000.png")
    assert run(main, [str(grey), str(tmp_path / "out.zip"), "--vae-path", str(vae_dir)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and "\n" not in line and f"{grey} holds 1-channel images; the VAE encodes RGB" \
        in line
    assert run(main, [str(grey), str(tmp_path / "out.zip"), "--vae-path", str(tmp_path / "novae")]) == 2
    assert f"codec.vae_path={tmp_path}/novae is not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey"]
    (tmp_path / "done.zip").write_bytes(b"")
    assert run(main, [str(grey), str(tmp_path / "done.zip"), "--vae-path", str(vae_dir)]) == 2
    assert "done.zip exists already; delete it to encode again" in capsys.readouterr().err
