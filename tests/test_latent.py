"""Training and sampling in a VAE's latent space as EDM2 does it, end to end on a tiny random diffusers AutoencoderKL
(no download, no edm2 code): images → ``python -m edmlab.cli.encode`` → ``src/train.py data=latents codec=sd_vae``
→ grids and files of decoded images → ``src/eval.py``; an edm2 img512 pickle (its StabilityVAEEncoder, latent
channels) sampled and decoded, with and without autoguidance; bad input refused in one line before anything is
written."""
import json
import shutil
import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import TINY, compose, run_script, with_overrides

from omegaconf import OmegaConf

import edmlab
from edmlab.codec import build_codec
from edmlab.codec.sd_vae import SDVAECodec
from edmlab.design.guidance import GuidedDenoiser
from edmlab.evaluation import evaluate
from edmlab.sampling.generation import draw
from edmlab.training.module import EDMModule, latent_seed
from edmlab.training.run import build

diffusers = pytest.importorskip("diffusers")
from test_codec import edm2_constants, images, save_vae, write_edm2_latents, write_images  # noqa: E402
from test_nvlabs_pickle import Record, random_denoiser, toy_spec, write_snapshot  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

SIDE = 16  # pixels of the training images; the 2× VAE below makes 4×8×8 latents of them (moments 8×8×8)
VAE_2X = dict(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, sample_size=SIDE)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(2× VAE folder, 16² RGB image folder, its latent data set written by the encode tool)."""
    from edmlab.cli.encode import main

    root = tmp_path_factory.mktemp("latent")
    vae = save_vae(root / "vae", **VAE_2X)
    pictures = write_images(root / "img", images(8, size=SIDE))
    latents = main([str(pictures), str(root / "img-sd"), "--vae-path", str(vae), "--device", "cpu"])
    return vae, pictures, latents


def latent_args(vae, latents, *extra) -> list[str]:
    return with_overrides(TINY, ["data=latents", f"data.dataset.path={latents}", "codec=sd_vae",
                                 f"codec.vae_path={vae}", "batch_size=4", *extra])


def grid_cells(path, count: int, side: int, scale: int) -> np.ndarray:
    """The ``count`` images of a ``save_grid`` PNG, [count, side, side, 3] (⌈√count⌉ per row, 1-pixel borders)."""
    pixels = np.asarray(PIL.Image.open(path))[::scale, ::scale]
    nrow = int(np.ceil(np.sqrt(count)))
    return np.stack([pixels[1 + (k // nrow) * (side + 1):][:side, 1 + (k % nrow) * (side + 1):][:, :side]
                     for k in range(count)])


def decoded(codec, D, shape, seeds, sampler: dict, label_dim=0) -> np.ndarray:
    """What the samples of ``seeds`` decode to, [N, H, W, 3] uint8, from edmlab's sampler and the codec's decode."""
    z = draw(D, shape, seeds, len(seeds), sampler, torch.device("cpu"), label_dim).samples
    return codec.decode(z).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def latent_run(files, tmp_path_factory):
    """4 steps of src/train.py in the latent space, a grid at step 2: the run dir."""
    vae, _, latents = files
    cwd = tmp_path_factory.mktemp("train")
    args = latent_args(vae, latents, "logger=none", f"hydra.run.dir={cwd / 'run'}", "duration_kimg=0.016",
                       "callbacks.final_report.num_samples=8", "callbacks.sample_grid.every_n_steps=2",
                       "callbacks.sample_grid.num_images=4", "sampler.num_steps=4")
    result = run_script("train.py", args, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "run"


def test_a_latent_run_trains_on_latents_and_shows_decoded_images(files, latent_run):
    vae, _, _ = files
    D = edmlab.load(latent_run)
    assert D.model_spec["shape"] == [4, 8, 8] and D.model_spec["network_kwargs"]["in_channels"] == 4
    codec_record = D.training_config["codec"]
    assert codec_record["name"] == "sd_vae" and codec_record["vae_path"] == str(vae)  # network.pt records the codec
    assert json.loads((latent_run / "metrics.json").read_text())["step"] == 4
    sampler = D.training_config["sampler"]
    codec = SDVAECodec(vae)
    grid = latent_run / "samples.png"
    with PIL.Image.open(grid) as picture:  # 8 decoded 16² RGB images, 3 per row, 1-pixel borders, scale 4
        assert picture.mode == "RGB" and picture.size == ((3 * (SIDE + 1) + 1) * 4,) * 2
    expected = decoded(codec, D, [4, 8, 8], range(8), sampler)
    assert np.abs(grid_cells(grid, 8, SIDE, 4).astype(int) - expected).max() <= 1  # a level of float rounding
    with PIL.Image.open(latent_run / "samples" / "step_0000002.png") as picture:  # the preview at step 2
        assert picture.mode == "RGB" and picture.size == ((2 * (SIDE + 1) + 1) * 4,) * 2


def test_eval_of_a_latent_run_decodes_with_the_runs_codec(files, latent_run, tmp_path):
    vae, _, _ = files
    job = ["logger=none", f"ckpt={latent_run}", "num_samples=4", "sampler.num_steps=4", "save=npz", "grid_images=4"]
    record = evaluate(compose("eval", job, tmp_path / "job"))
    assert record["status"] == "ok"
    saved = np.load(tmp_path / "job" / "samples.npz")["images"]
    D = edmlab.load(latent_run)
    sampler = compose("eval", job, tmp_path / "x").sampler
    expected = decoded(SDVAECodec(vae), D, [4, 8, 8], range(4), OmegaConf.to_container(sampler, resolve=True))
    assert saved.shape == (4, SIDE, SIDE, 3) and np.abs(saved.astype(int) - expected).max() <= 1
    with PIL.Image.open(tmp_path / "job" / "samples.png") as picture:  # 4 decoded 16² images at scale 32 // 16
        assert picture.mode == "RGB" and picture.size == ((2 * (SIDE + 1) + 1) * 2,) * 2
    moved = shutil.copytree(vae, tmp_path / "moved-vae")  # codec.vae_path names the folder where it is now
    again = evaluate(compose("eval", [*job, f"codec.vae_path={moved}"], tmp_path / "moved"))
    assert again["status"] == "ok"
    assert np.array_equal(np.load(tmp_path / "moved" / "samples.npz")["images"], saved)


def test_latents_are_drawn_from_the_global_batch_of_each_step(files, tmp_path):
    """z = (mean + ε·std)·scale + bias (EDM2 encode_latents), ε the rows of the global batch's draw of (seed, step):
    two devices, or two accumulation rounds, draw the one-device latents; a resumed module repeats them."""
    vae, _, latents = files
    _, module, datamodule = build(compose("train", latent_args(vae, latents, "seed=3"), tmp_path / "run"))
    moments = torch.stack([datamodule.dataset[i][0] for i in range(4)])
    mean, std = moments.chunk(2, dim=1)
    scale, bias = (torch.from_numpy(v).view(1, -1, 1, 1) for v in edm2_constants())
    eps = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(latent_seed(3, 5)))
    expected = (mean + eps * std) * scale + bias

    def transfer(m, rows, step=5, world=1, rank=0, accum=1):
        m._trainer = types.SimpleNamespace(training=True, global_step=step, world_size=world, global_rank=rank,
                                           accumulate_grad_batches=accum)
        x, _ = m.on_after_batch_transfer((moments[rows], torch.zeros(len(rows), 0)), 0)
        return x

    torch.testing.assert_close(transfer(module, [0, 1, 2, 3]), expected, rtol=0, atol=1e-6)
    two_devices = torch.empty_like(expected)
    two_devices[0::2], two_devices[1::2] = transfer(module, [0, 2], world=2), transfer(module, [1, 3], world=2, rank=1)
    assert torch.equal(two_devices, transfer(module, [0, 1, 2, 3]))
    rounds = torch.cat([transfer(module, [0, 1], step=6, accum=2), transfer(module, [2, 3], step=6, accum=2)])
    _, resumed, _ = build(compose("train", latent_args(vae, latents, "seed=3"), tmp_path / "run"))
    assert torch.equal(rounds, transfer(resumed, [0, 1, 2, 3], step=6))
    assert not torch.allclose(rounds, transfer(module, [0, 1, 2, 3], step=5))
    pixels, batch = build_codec(), (moments, torch.zeros(4, 0))  # codec=pixels: today's tensors, untouched
    assert EDMModule.on_after_batch_transfer(types.SimpleNamespace(codec=pixels), batch, 0) is batch
    assert pixels.pixels(moments, "cpu") is moments and pixels.to_pixels(moments) is moments


# --- an edm2 img512 pickle: its encoder decodes the samples ---------------------------------------------------------

def edm2_spec(label_dim: int, channels: int = 16) -> dict:
    spec = toy_spec("Precond", "edm2")
    spec["network"]["model_channels"] = channels
    spec["network_kwargs"] = {**spec["network_kwargs"], "in_channels": 4, "out_channels": 4, "label_dim": label_dim}
    return {**spec, "shape": [4, 8, 8]}


def write_img512(path, spec, marker, **encoder):
    """An edm2 img512 snapshot as its training loop writes one: the Precond on 4 latent channels (float16) and a
    persistent StabilityVAEEncoder (its __dict__: vae_name, scale, bias, batch_size; the VAE itself not pickled)."""
    scale, bias = edm2_constants()
    state = dict(_init_args=(), _init_kwargs={}, vae_name="stabilityai/sd-vae-ft-mse", scale=scale, bias=bias,
                 batch_size=8, _vae=None, **encoder)
    poison = f"import pathlib; pathlib.Path({str(marker)!r}).touch()"
    D = random_denoiser(spec, torch.float16)
    return write_snapshot(path, D, spec, marker, dtype=torch.float16,
                          extra={"encoder": Record("StabilityVAEEncoder", state, poison)})


@pytest.fixture(scope="module")
def img512(tmp_path_factory):
    """(8× VAE folder, an img512-style conditional pickle, an unconditional smaller one as its guide)."""
    root = tmp_path_factory.mktemp("img512")
    marker = root / "module_src_ran"
    vae = save_vae(root / "vae")
    main = write_img512(root / "edm2-img512-s-2147483-0.130.pkl", edm2_spec(4), marker)
    guide = write_img512(root / "edm2-img512-xs-uncond-2147483-0.045.pkl", edm2_spec(0), marker)
    yield vae, main, guide
    assert not marker.exists() and "torch_utils" not in sys.modules


def test_an_img512_pickle_samples_decoded_images_with_and_without_autoguidance(img512, tmp_path):
    vae, main, guide = img512
    job = ["logger=none", f"ckpt={main}", f"codec.vae_path={vae}", "num_samples=3", "sampler.num_steps=4",
           "save=npz", "grid_images=3"]
    sampler = OmegaConf.to_container(compose("eval", job, tmp_path / "x").sampler, resolve=True)
    D, G, codec = edmlab.load(main), edmlab.load(guide), SDVAECodec(vae)
    for name, extra, denoiser in (("plain", [], D), ("guided", [f"guide={guide}", "guidance=1.4"],
                                                     GuidedDenoiser(D, G, 1.4))):
        record = evaluate(compose("eval", [*job, *extra], tmp_path / name))
        assert record["status"] == "ok"
        saved = np.load(tmp_path / name / "samples.npz")
        expected = decoded(codec, denoiser, [4, 8, 8], range(3), sampler, label_dim=4)
        assert saved["images"].shape == (3, 64, 64, 3) and np.abs(saved["images"].astype(int) - expected).max() <= 1
        with PIL.Image.open(tmp_path / name / "samples.png") as picture:
            assert picture.mode == "RGB"
    plain, guided = (np.load(tmp_path / n / "samples.npz")["images"] for n in ("plain", "guided"))
    assert not np.array_equal(plain, guided)


# --- bad input: one line, before anything is written ----------------------------------------------------------------

def test_bad_latent_training_input_is_refused_before_anything_is_written(files, tmp_path, monkeypatch):
    """Each a ValueError of one line from ``build``, before the run dir exists (src/train.py turns it into exit 2
    and removes the dir Hydra made: tests/test_train.py)."""
    vae, pictures, latents = files
    monkeypatch.delenv("EDMLAB_VAE", raising=False)
    six = write_edm2_latents(tmp_path / "six.zip", [np.zeros((6, 8, 8), np.float32)] * 2, as_zip=True)
    wide = save_vae(tmp_path / "wide", **{**VAE_2X, "latent_channels": 16})
    cases = [
        (["data=image_folder", f"data.dataset.path={pictures}", "codec=sd_vae", f"codec.vae_path={vae}"],
         rf"^data.dataset.path={pictures} holds 3-channel images, which were never encoded; codec=sd_vae trains on "
         r"the 8-channel moments of a latent data set: run python -m edmlab.cli.encode"),
        (latent_args(vae, six), rf"^data.dataset.path={six} holds 6-channel latents; codec=sd_vae with 4 latent "
                                r"channels expects 8 \(mean and std per channel\)$"),
        (latent_args(vae, latents, "augment=edm"),
         r"^augment=edm with codec=sd_vae: EDM2 trains latents without augmentation \(its augmentations act on "
         r"pixels\); use augment=none$"),
        (latent_args(vae, latents, "codec.vae_path=null"), r"^codec=sd_vae needs codec.vae_path: a local folder "
                                                            r"with config.json \+ diffusion_pytorch_model.safetensors"),
        (latent_args(wide, latents), r"wide/config.json: latent_channels=16, but codec.raw_mean/raw_std have 4"),
        (with_overrides(TINY, [f"codec.vae_path={vae}"]),
         rf"^codec.vae_path={vae} is set but codec=pixels decodes nothing; add codec=sd_vae"),
        (with_overrides(TINY, ["data=latents", f"data.dataset.path={latents}"]),
         rf"^data.dataset.path={latents} holds 8-channel items, which look like the moments of a latent data set"),
    ]
    for overrides, match in cases:
        with pytest.raises(ValueError, match=match):
            build(compose("train", overrides, tmp_path / "run"))
        assert not (tmp_path / "run").exists()


def test_an_img512_pickle_without_vae_path_is_one_line_before_sampling(img512, tmp_path):
    _, main, _ = img512
    result = run_script("eval.py", [f"ckpt={main}", "logger=none"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {main} generates latents of the VAE stabilityai/sd-vae-ft-mse (a StabilityVAEEncoder), which need "
        f"decoding: set codec.vae_path=<local folder with config.json + diffusion_pytorch_model.safetensors of "
        f"stabilityai/sd-vae-ft-mse>"]
    assert not (tmp_path / "outputs").exists()
