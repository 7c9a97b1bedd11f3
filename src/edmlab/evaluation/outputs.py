"""What an evaluation job leaves in its directory: ``metrics.json``, ``samples.png`` (an image grid; a scatter or
histogram for points), ``images/<seed:06d>.png`` (``save=png``) or ``samples.npz`` (``save=npz``), and the offline
W&B run."""
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from edmlab.sampling.generation import Drawn
from edmlab.infra.images import save_grid, to_uint8
from edmlab.data.mixture import GaussianMixture
from edmlab.evaluation.subject import Subject


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(_jsonable(record), indent=2, allow_nan=False) + "\n")


def _save_histogram(values: torch.Tensor, path: Path, mixture: GaussianMixture | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.hist(values.numpy(), bins=80, density=True, color="tab:blue", alpha=0.7, label="samples")
    if mixture is not None:
        lo, hi = float(values.min()), float(values.max())
        grid = torch.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 400, dtype=torch.float64)
        ax.plot(grid.numpy(), mixture.log_prob(grid[:, None]).exp().numpy(), color="k", lw=1, label="p(x)")
    ax.legend()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def save_picture(out: Path, subject: Subject, samples: torch.Tensor, grid_images: int) -> Path | None:
    """samples.png: the first ``grid_images`` images, or all points as a scatter (2-D) or a histogram (1-D); none
    when ``grid_images`` is 0."""
    if not grid_images:
        return None
    if subject.is_image:
        return save_grid(samples[:grid_images], out / "samples.png", scale=max(1, 32 // samples.shape[-1]))
    if samples.ndim == 2 and samples.shape[1] == 2:
        from edmlab.viz.points import save_scatter

        reference = subject.mixture.sample(len(samples), torch.Generator().manual_seed(0)) if subject.mixture else None
        return save_scatter(samples, out / "samples.png", reference=reference, title=subject.kind)
    if samples.ndim == 2 and samples.shape[1] == 1:
        return _save_histogram(samples[:, 0], out / "samples.png", subject.mixture)
    return None


def save_samples(out: Path, subject: Subject, drawn: Drawn, save: str) -> None:
    """``save=png``: images/<seed:06d>.png; ``save=npz``: samples.npz with the seeds (and labels), images as uint8
    [N, H, W, C] as PNGs hold them, points as float64 [N, D]."""
    if save == "png":
        from PIL import Image

        folder = out / "images"
        folder.mkdir(parents=True, exist_ok=True)
        pictures = to_uint8(drawn.samples).permute(0, 2, 3, 1).numpy()
        for seed, picture in zip(drawn.seeds, pictures):
            Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(folder / f"{seed:06d}.png")
    elif save == "npz":
        arrays = {"seeds": np.asarray(drawn.seeds, dtype=np.int64)}
        if subject.is_image:
            arrays["images"] = to_uint8(drawn.samples).permute(0, 2, 3, 1).numpy()
        else:
            arrays["samples"] = drawn.samples.numpy()
        if drawn.labels is not None:
            arrays["labels"] = drawn.labels.numpy()
        np.savez(out / "samples.npz", **arrays)


def log_to_wandb(cfg: DictConfig, out: Path, record: dict, grid: Path | None) -> None:
    """Metrics and the grid into an offline W&B run in the job directory (``logger=none`` skips it)."""
    spec = (cfg.get("logger") or {}).get("wandb")
    if not spec:
        return
    try:
        import wandb

        run = wandb.init(mode="offline" if spec.get("offline", True) else "online", dir=str(out),
                         project=spec.get("project", "edmlab"), group=spec.get("group"), name=spec.get("name"),
                         job_type=str(cfg.task_name), config=_jsonable(record.get("config", {})))
        try:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            run.log({**scalars, **({"samples": wandb.Image(str(grid))} if grid is not None else {})})
            run.summary.update(scalars)
        finally:
            run.finish()
    except Exception as e:  # noqa: BLE001 - the metrics are on disk already; a logger failure must not fail the job
        warnings.warn(f"W&B logging failed ({type(e).__name__}: {e}); metrics.json is complete", RuntimeWarning)
