"""edmlab's ``codec=sd_vae`` vs NVlabs/edm2's ``StabilityVAEEncoder``, side by side, on the same VAE and images.

    python benchmarks/vae_side_by_side.py --edm2 DIR [--vae VAE_DIR] [--images 8] [--resolution 64] [--device cpu]

DIR is a checkout of NVlabs/edm2 (its ``training/encoders.py``, ``training/dataset.py``, ``torch_utils`` and
``dnnlib`` are imported from there; nothing of edm2 is copied into edmlab). VAE_DIR is a local AutoencoderKL folder
(config.json + diffusion_pytorch_model.safetensors); without it a tiny random 8× one (four blocks of 8 channels) is
saved to a temp folder. The images are random 8×8 RGB pictures upsampled (nearest) to ``--resolution``.

Rows, each a max |Δ| over all images and entries:

- moments: edm2 ``encode_pixels(u8)`` vs edmlab ``codec.encode(u8)`` (posterior mean and std, float32);
- latents: edm2 ``encode_latents`` vs edmlab ``codec.sample`` of the same moments, after the same
  ``torch.manual_seed`` (both draw ε with ``randn_like`` from torch's global generator);
- decoded: edm2 ``decode`` vs edmlab ``codec.decode`` of the same latents (uint8; also the share of pixels that
  differ);
- the encode tool: edm2's ``training.dataset.ImageFolderDataset`` reading what ``python -m edmlab.cli.encode``
  wrote, vs edm2's ``encode_pixels`` (the layout is edm2's, so edm2 loads it);
- the pickle: a real edm2 ``StabilityVAEEncoder`` pickled by edm2's persistence, read back by edmlab without running
  it (``edmlab.io.nvlabs.encoders.pickle_codec``): max |Δ| of scale and bias;
- precision: edmlab in bfloat16 / float16 vs edm2 in float32 (moments), for scale.
"""
import argparse
import io
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def tiny_vae(folder: Path) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4,
                  latent_channels=4, sample_size=64).save_pretrained(folder)
    return folder


def pictures(n: int, resolution: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return small.repeat_interleave(resolution // 8, 2).repeat_interleave(resolution // 8, 3)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(torch.float64).cpu() - b.to(torch.float64).cpu()).abs().max())


def main():
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--edm2", required=True, help="NVlabs/edm2 checkout")
    cli.add_argument("--vae", default=None, help="local AutoencoderKL folder (default: a tiny random one)")
    cli.add_argument("--images", type=int, default=8)
    cli.add_argument("--resolution", type=int, default=64)
    cli.add_argument("--device", default="cpu")
    cli.add_argument("--seed", type=int, default=0)
    args = cli.parse_args()
    sys.path.insert(0, str(Path(args.edm2).resolve()))
    from training.dataset import ImageFolderDataset as Edm2Dataset
    from training.encoders import StabilityVAEEncoder

    from edmlab.cli.encode import main as encode_main
    from edmlab.codec.sd_vae import SDVAECodec
    from edmlab.io.nvlabs.encoders import pickle_codec
    from edmlab.io.nvlabs.unpickler import read_pickle

    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="vae_sbs_"))
    vae = Path(args.vae) if args.vae else tiny_vae(tmp / "vae")
    x = pictures(args.images, args.resolution, args.seed).to(device)
    theirs = StabilityVAEEncoder(vae_name=str(vae), batch_size=4)
    ours = SDVAECodec(vae, batch_size=4)
    rows = []

    m_theirs, m_ours = theirs.encode_pixels(x), ours.encode(x)
    rows.append(("moments (mean, std)", tuple(m_ours.shape), max_diff(m_theirs, m_ours), ""))
    torch.manual_seed(args.seed + 1)
    z_theirs = theirs.encode_latents(m_theirs)
    torch.manual_seed(args.seed + 1)
    z_ours = ours.sample(m_theirs)
    rows.append(("latents (normalised sample)", tuple(z_ours.shape), max_diff(z_theirs, z_ours), ""))
    g = torch.Generator(device).manual_seed(args.seed + 1)
    rows.append(("latents, edmlab with a torch.Generator", tuple(z_ours.shape),
                 max_diff(z_theirs, ours.sample(m_theirs, g)), "same seed"))
    d_theirs, d_ours = theirs.decode(z_theirs), ours.decode(z_theirs)
    share = float((d_theirs != d_ours).to(torch.float64).mean())
    rows.append(("decoded images (uint8)", tuple(d_ours.shape), max_diff(d_theirs, d_ours),
                 f"{share:.2e} of entries differ"))

    source = tmp / "img"
    import PIL.Image

    for i, image in enumerate(x.cpu()):
        (source / "00000").mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image.permute(1, 2, 0).numpy()).save(source / f"00000/img{i:08d}.png")
    encode_main([str(source), str(tmp / "lat.zip"), "--vae-path", str(vae), "--batch", "4", "--device", args.device])
    read_back = Edm2Dataset(str(tmp / "lat.zip"))
    stored = torch.stack([torch.from_numpy(np.asarray(read_back[i][0])) for i in range(len(read_back))])
    rows.append(("edmlab.cli.encode → edm2 ImageFolderDataset", tuple(stored.shape),
                 max_diff(stored, m_theirs), f"{len(read_back)} items, edm2 shape {read_back.image_shape}"))

    blob = io.BytesIO()
    pickle.dump(dict(encoder=StabilityVAEEncoder(vae_name="stabilityai/sd-vae-ft-mse")), blob)
    (tmp / "encoder.pkl").write_bytes(blob.getvalue())
    mapped = pickle_codec(read_pickle(tmp / "encoder.pkl")["encoder"], tmp / "encoder.pkl", vae_path=vae)
    rows.append(("edm2 pickle → codec: scale", (4,), float(np.abs(mapped.scale - theirs.scale).max()), ""))
    rows.append(("edm2 pickle → codec: bias", (4,), float(np.abs(mapped.bias - theirs.bias).max()), ""))

    for dtype in ("bfloat16", "float16"):
        if dtype == "float16" and device.type == "cpu":
            continue
        low = SDVAECodec(vae, batch_size=4, dtype=dtype)
        rows.append((f"moments, edmlab {dtype} vs edm2 float32", tuple(m_ours.shape),
                     max_diff(m_theirs, low.encode(x)), "precision, not a mismatch"))

    name = "random tiny VAE" if args.vae is None else str(vae)
    print(f"edmlab codec=sd_vae vs NVlabs/edm2 StabilityVAEEncoder — {name}, {args.images} images "
          f"{args.resolution}², {device}, torch {torch.__version__}\n")
    print("| quantity | shape | max abs difference | note |\n|---|---|---|---|")
    for what, shape, diff, note in rows:
        print(f"| {what} | {list(shape)} | {diff:.3g} | {note} |")


if __name__ == "__main__":
    main()
