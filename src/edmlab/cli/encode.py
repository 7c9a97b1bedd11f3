"""Encode an image data set into a latent data set with Stability's VAE (EDM2's ``dataset_tool.py encode``): for
every image the posterior mean and std, float32 [2L, H/8, W/8], as ``{i//1000:05d}/img-mean-std-{i:08d}.npy`` in
EDM2's layout, plus ``dataset.json`` with the labels keyed by the new names (null when the images have none).
``data=latents data.dataset.path=<dest>`` reads the result, and so does NVlabs/edm2's training.

Images are read in sorted file order (image i of the source is latent i), ``--batch`` at a time, on ``--device``,
with the VAE of ``--vae-path`` (a local folder with config.json + diffusion_pytorch_model.safetensors) in
``--dtype``. Resumable: each array is written atomically and a second run encodes only what is missing (a .zip
``--dest`` is assembled from ``<dest>.partial/`` once every image is there). Under torchrun every rank encodes its
own contiguous share and rank 0 writes dataset.json (and the ZIP). Bad input (a missing folder, a VAE of another
kind, grey or non-square images, a finished --dest) is one line ``error: ...`` with exit code 2, before anything
is written.
"""
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edmlab.cli.common import parser, run
from edmlab.codec.sd_vae import RAW_MEAN, RAW_STD, SDVAECodec
from edmlab.data.image_folder import ImageFolderDataset
from edmlab.infra.distributed import env_ranks, init_process_group, rank_device
from edmlab.infra.files import atomic_write, atomic_write_json, remove_orphans


def latent_name(index: int) -> str:
    """EDM2's name of latent ``index``: ``{index//1000:05d}/img-mean-std-{index:08d}.npy``."""
    return f"{index // 1000:05d}/img-mean-std-{index:08d}.npy"


def npy_bytes(array: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return f.getvalue()


def uint8_pixels(image: torch.Tensor) -> torch.Tensor:
    """The uint8 levels u of an ImageFolderDataset item u/127.5 − 1, exactly."""
    return ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def open_source(source: str, max_images: int | None, factor: int) -> ImageFolderDataset:
    images = ImageFolderDataset(source, use_labels=True, decode_at_start=0)
    channels, resolution, _ = images.shape
    if channels != 3:
        raise ValueError(f"{source} holds {channels}-channel images; the VAE encodes RGB (3 channels): convert them "
                         f"with NVlabs/edm2's dataset_tool.py convert")
    if resolution % factor:
        raise ValueError(f"{source} holds {resolution}x{resolution} images, not a multiple of the VAE's "
                         f"downsampling factor {factor}; resize them (e.g. 512x512)")
    if max_images is not None:
        images.files = images.files[:max_images]
        if images.labels is not None:
            images.labels = images.labels[:max_images]
    return images


def encode_share(codec, images, indices, work: Path, batch: int, device, quiet: bool) -> int:
    """Encode the images ``indices`` whose arrays are not yet in ``work``; the number encoded."""
    todo = [i for i in indices if not (work / latent_name(i)).is_file()]
    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), desc=f"Encoding into {work}", unit="img",
               disable=quiet or None)
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        pixels = torch.stack([uint8_pixels(images[i][0]) for i in chunk]).to(device)
        moments = codec.encode(pixels).cpu().numpy()
        for i, array in zip(chunk, moments):
            path = work / latent_name(i)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = npy_bytes(array)
            atomic_write(path, lambda f, data=data: f.write(data))
        bar.update(len(chunk))
    bar.close()
    return len(todo)


def labels_json(images) -> dict:
    """EDM2's dataset.json of the latents: ``{"labels": [[name, label], ...]}`` or ``{"labels": null}``."""
    if images.labels is None:
        return {"labels": None}
    return {"labels": [[latent_name(i), int(label)] for i, label in enumerate(images.labels)]}


def finish(images, work: Path, dest: Path) -> None:
    """dataset.json, then (a .zip ``dest``) the archive of ``work``, written whole before it is renamed into place."""
    count = len(images)
    missing = [latent_name(i) for i in range(count) if not (work / latent_name(i)).is_file()]
    if missing:
        raise ValueError(f"{work} lacks {len(missing)} of {count} latents (e.g. {missing[0]}); run the command again")
    atomic_write_json(work / "dataset.json", labels_json(images))
    if work == dest:
        return

    def write_zip(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
            for name in [latent_name(i) for i in range(count)] + ["dataset.json"]:
                archive.write(work / name, name)

    atomic_write(dest, write_zip)
    shutil.rmtree(work)


def main(argv: list[str] | None = None) -> Path:
    cli = parser(__doc__, "encode")
    cli.add_argument("source", help="folder or ZIP of RGB images (NVlabs/edm dataset_tool.py layout)")
    cli.add_argument("dest", help="output folder, or a .zip")
    cli.add_argument("--vae-path", required=True, help="local VAE folder: config.json + "
                                                       "diffusion_pytorch_model.safetensors")
    cli.add_argument("--batch", type=int, default=8, help="images per VAE call (per rank)")
    cli.add_argument("--max-images", type=int, default=None, help="only the first N images (default: all)")
    cli.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    cli.add_argument("--dtype", default="float32", help="precision of the VAE: float32, float16 or bfloat16")
    args = cli.parse_args(argv)
    if args.batch < 1:
        cli.error(f"--batch must be >= 1, got {args.batch}")
    if args.max_images is not None and args.max_images < 1:
        cli.error(f"--max-images must be >= 1, got {args.max_images}")
    ranks = env_ranks()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    device = rank_device(device, ranks)
    init_process_group(ranks, device)
    dest = Path(args.dest)
    as_zip = dest.suffix.lower() == ".zip"
    work = dest.with_name(dest.name + ".partial") if as_zip else dest

    def prepare():
        if as_zip and dest.exists():
            raise FileExistsError(f"{dest} exists already; delete it to encode again")
        if not as_zip and dest.exists() and not dest.is_dir():
            raise NotADirectoryError(f"--dest {dest} is a file; give a folder or a .zip")
        if (work / "dataset.json").is_file():
            raise FileExistsError(f"{work} is a finished latent data set (it has dataset.json); delete it to "
                                  f"encode again")
        codec = SDVAECodec(args.vae_path, RAW_MEAN, RAW_STD, batch_size=args.batch, dtype=args.dtype)
        return codec, open_source(args.source, args.max_images, codec.factor)

    def clean():
        work.mkdir(parents=True, exist_ok=True)
        remove_orphans(work, *[p for p in work.rglob("*") if p.is_dir()])

    codec, images = ranks.agree(prepare)
    ranks.agree(clean, zero_only=True)
    ranks.agree(encode_share, codec, images, ranks.share(range(len(images))), work, args.batch, device,
                not ranks.is_zero)
    ranks.agree(finish, images, work, dest, zero_only=True)
    if ranks.is_zero:
        print(json.dumps({"dest": str(dest), "images": len(images), "shape": list(codec.moments_shape(images.shape))}))
    return dest


if __name__ == "__main__":
    raise SystemExit(run(main))
