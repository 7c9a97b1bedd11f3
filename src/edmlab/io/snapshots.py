"""Post-hoc EMA snapshots on disk (EDM2 §3): the files a power-EMA training writes every ``snapshot_kimg``, read back
as data, and the networks reconstructed from them (``edmlab.design.phema`` holds the formulas)."""
import os
import shutil
from pathlib import Path

import torch

from edmlab.design.phema import check_std, reconstruct
from edmlab.infra.files import atomic_torch_save, atomic_write
from edmlab.io.network_file import build_denoiser, load_weights, read_plain, save_network


SNAPSHOT_FORMAT = "edmlab-phema-snapshot-v1"


SNAPSHOT_DIR = "phema"


def snapshot_path(directory: str | Path, nimg: int) -> Path:
    return Path(directory) / f"snapshot-{int(nimg):012d}.pt"


def save_snapshot(directory: str | Path, nimg: int, stds, averages, model_spec: dict, config: dict | None) -> Path:
    """Write the power EMAs ``averages`` (modules, one per std) at ``nimg`` images atomically, so a crash leaves
    either the complete snapshot or none."""
    blob = {"format": SNAPSHOT_FORMAT, "nimg": int(nimg), "stds": [float(s) for s in stds], "model": model_spec,
            "config": config,
            "state_dicts": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in averages]}
    return atomic_torch_save(blob, snapshot_path(directory, nimg))


def carry_snapshots(source: str | Path, target: str | Path, max_nimg: int) -> list[Path]:
    """On resume into another run directory: hard-link (else copy) the snapshots up to the checkpoint's
    ``max_nimg`` images from the earlier run, so that the new run holds its whole history; later ones (from
    after the checkpoint) are left behind, and files already in ``target`` are kept."""
    source, target = Path(source), Path(target)
    if not source.is_dir() or source.resolve() == target.resolve():
        return []
    carried = []
    for f in sorted(source.glob("snapshot-*.pt")):
        dst = target / f.name
        if int(f.stem.split("-")[1]) > max_nimg or dst.exists():
            continue
        target.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, dst)
        except OSError:
            with open(f, "rb") as src:
                atomic_write(dst, lambda out: shutil.copyfileobj(src, out))
        carried.append(dst)
    return carried


def snapshot_dir(run: str | Path) -> Path:
    """The snapshot folder of a run directory (or the folder itself)."""
    run = Path(run)
    if not run.exists():
        raise FileNotFoundError(f"no run at {run}; pass the run directory of a training with ema=power")
    return run / SNAPSHOT_DIR if (run / SNAPSHOT_DIR).is_dir() else run


def read_snapshot(path: Path) -> dict:
    """One snapshot file, read as data (``edmlab.io.network_file.read_plain``: nothing in it runs); its ``file`` is the path,
    which names it in the errors of what is built from its model spec."""
    blob = read_plain(path, expected=f"a post-hoc EMA snapshot ({SNAPSHOT_FORMAT}) written by src/train.py ema=power")
    states = blob.get("state_dicts") if isinstance(blob, dict) else None
    if not (isinstance(blob, dict) and blob.get("format") == SNAPSHOT_FORMAT and isinstance(blob.get("nimg"), int)
            and isinstance(blob.get("stds"), list) and isinstance(states, list) and len(blob["stds"]) == len(states)
            and all(isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values()) for sd in states)):
        raise ValueError(f"{path} is not a post-hoc EMA snapshot ('format': {SNAPSHOT_FORMAT!r}, nimg, one state "
                         f"dict of tensors per std); the snapshot-*.pt files of a run are written by src/train.py "
                         f"ema=power")
    return {**blob, "file": path}


def load_snapshots(run: str | Path, at_kimg: float | None = None) -> list[dict]:
    """The snapshots of a run (sorted by nimg), those up to ``at_kimg`` thousand images when given."""
    directory = snapshot_dir(run)
    files = sorted(directory.glob("snapshot-*.pt"))
    if not files:
        raise FileNotFoundError(f"{run} holds no post-hoc EMA snapshots ({directory}/snapshot-*.pt): train it with "
                                f"ema=power (snapshots every ema.snapshot_kimg)")
    snaps = [read_snapshot(f) for f in files]
    first = snaps[0]["nimg"]
    if at_kimg is not None:
        snaps = [s for s in snaps if s["nimg"] <= at_kimg * 1000]
        if not snaps:
            raise ValueError(f"at_kimg={at_kimg}: the first snapshot of {run} is at {first / 1000:g} kimg; "
                             f"pass a later kimg")
    return snaps


def load_reconstructed(run: str | Path, std: float, at_kimg: float | None = None,
                       device: str | torch.device = "cpu") -> torch.nn.Module:
    """The denoiser of a run with its post-hoc EMA of width ``std`` (what ``edmlab.load`` gives for a network file)."""
    snaps = load_snapshots(run, at_kimg)
    denoiser = build_denoiser(snaps[-1]["model"], source=snaps[-1]["file"])
    load_weights(denoiser, reconstruct(snaps, [std])[0], snaps[-1]["file"])
    denoiser.model_spec = snaps[-1]["model"]
    config = snaps[-1].get("config")
    denoiser.training_config = config if isinstance(config, dict) else None
    denoiser.phema = {"std": float(std), "kimg": snaps[-1]["nimg"] / 1000}
    return denoiser.eval().requires_grad_(False).to(device)


def write_networks(run: str | Path, stds, at_kimg: float | None = None, out_dir: str | Path | None = None) -> list[Path]:
    """``network-phema-<std>.pt`` files (edmlab network files, read by ``edmlab.load``) in ``out_dir`` (the run)."""
    stds = [check_std(s) for s in stds]
    snaps = load_snapshots(run, at_kimg)
    out_dir = Path(out_dir) if out_dir is not None else Path(run)
    denoiser = build_denoiser(snaps[-1]["model"], source=snaps[-1]["file"])
    paths = []
    for std, state in zip(stds, reconstruct(snaps, stds)):
        load_weights(denoiser, state, snaps[-1]["file"])
        paths.append(save_network(out_dir / f"network-phema-{std:.3f}.pt", denoiser, snaps[-1]["model"],
                                  snaps[-1].get("config")))
    return paths
