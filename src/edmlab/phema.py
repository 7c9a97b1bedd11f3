"""Post-hoc EMA (EDM2, Karras et al. 2024, §3 and Appendix C): track power-function EMAs of the weights during
training, store their snapshots, and afterwards reconstruct the EMA of any other length by least squares.

A power-function EMA at training time t averages the weights θ(τ), τ ≤ t, with the profile
    p_γ,t(τ) = (γ + 1)·τ^γ / t^(γ+1)                                           (EDM2 Eq. 121),
whose relative standard deviation is
    σ_rel = √((γ + 1) / ((γ + 2)²·(γ + 3)))                                     (EDM2 Eq. 123),
between 0 (γ → ∞) and 1/√12 (γ = 0, the uniform average). It is tracked with
    θ̂ ← β·θ̂ + (1 − β)·θ,   β = (1 − Δt/t)^(γ + 1)                            (EDM2 Eq. 127),
t the images seen after the step and Δt the batch. Snapshots of profiles (t_i, γ_i) are combined as
Σ_i x_i·θ̂_i with x = A⁻¹b, A_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p_target⟩ (EDM2 Algorithm 3), the inner products in
closed form (EDM2 Eq. 151), x normalised to sum to 1.

``python -m edmlab.phema <run> --std 0.03,0.06,0.12 [--at-kimg K]`` writes ``<run>/network-phema-<std>.pt``.
"""
import argparse
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .export import build_denoiser, load_weights, read_plain, save_network
from .files import atomic_torch_save, atomic_write

STD_MAX = 1 / math.sqrt(12)
SNAPSHOT_FORMAT = "edmlab-phema-snapshot-v1"
SNAPSHOT_DIR = "phema"


def check_std(std: float) -> float:
    std = float(std)
    if not 0 < std < STD_MAX:
        raise ValueError(f"EMA std={std} is outside (0, {STD_MAX:.4f}): σ_rel = 1/√12 is the uniform average over "
                         f"all of training, the longest a power-function EMA can be; use e.g. 0.05 or 0.10")
    return std


def exp_to_std(gamma: float) -> float:
    """σ_rel = √((γ + 1)/((γ + 2)²(γ + 3))) (EDM2 Eq. 123)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def std_to_exp(std: float) -> float:
    """γ of a relative std: the largest real root of γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0, which is Eq. 123
    squared and multiplied out (EDM2 Eq. 126, Algorithm 2)."""
    s = check_std(std) ** -2
    return float(np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max())


def power_function_beta(std: float, t: float, delta_t: float) -> float:
    """β = (1 − Δt/t)^(γ + 1) (EDM2 Eq. 127), t the images seen after the step, Δt its batch."""
    return (1 - delta_t / t) ** (std_to_exp(std) + 1)


def profile_inner_product(t_a, std_a, t_b, std_b) -> np.ndarray:
    """⟨p_a, p_b⟩ = ∫ p_a·p_b dτ = (γ_a + 1)(γ_b + 1)·min(t_a, t_b)^(γ_a+γ_b+1) / ((γ_a + γ_b + 1)·t_a^(γ_a+1)·t_b^(γ_b+1))
    (EDM2 Eq. 151), broadcast over arrays of times and stds."""
    t_a, std_a, t_b, std_b = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (t_a, std_a, t_b, std_b)))
    g_a = np.vectorize(std_to_exp, otypes=[np.float64])(std_a)
    g_b = np.vectorize(std_to_exp, otypes=[np.float64])(std_b)
    t_min = np.minimum(t_a, t_b)
    log = ((g_a + g_b + 1) * np.log(t_min) - (g_a + 1) * np.log(t_a) - (g_b + 1) * np.log(t_b))
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * np.exp(log)


def posthoc_coefficients(t_in, std_in, t_out, std_out) -> np.ndarray:
    """Weights x [inputs, outputs] of the stored profiles (t_in, std_in) that best give (t_out, std_out) in L²:
    A x = b with the Gram matrix A and b the inner products with the targets, each column normalised to sum 1."""
    t_in, std_in = (np.asarray(v, dtype=np.float64).reshape(-1, 1) for v in np.broadcast_arrays(t_in, std_in))
    t_out, std_out = (np.asarray(v, dtype=np.float64).reshape(1, -1) for v in np.broadcast_arrays(t_out, std_out))
    A = profile_inner_product(t_in, std_in, t_in.T, std_in.T)
    b = profile_inner_product(t_in, std_in, t_out, std_out)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    return x / x.sum(axis=0, keepdims=True)


# --- snapshots in a run directory -------------------------------------------------------------------------------

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
    """One snapshot file, read as data (``edmlab.export.read_plain``: nothing in it runs); its ``file`` is the path,
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


def reconstruct(snapshots: list[dict], stds) -> list[dict]:
    """State dicts of the post-hoc EMAs of relative width ``stds`` at the last snapshot's time: Σ_i x_i·θ̂_i over
    every stored (snapshot, std) profile, accumulated in float64; buffers come from the last snapshot."""
    stds = [check_std(s) for s in stds]
    t_in = [s["nimg"] for s in snapshots for _ in s["stds"]]
    std_in = [std for s in snapshots for std in s["stds"]]
    states = [sd for s in snapshots for sd in s["state_dicts"]]
    last = snapshots[-1]
    x = posthoc_coefficients(t_in, std_in, [last["nimg"]] * len(stds), stds)
    out = []
    for j in range(len(stds)):
        state = {}
        for key, value in last["state_dicts"][0].items():
            if value.is_floating_point():
                acc = sum(float(x[i, j]) * sd[key].double() for i, sd in enumerate(states))
                state[key] = acc.to(value.dtype)
            else:
                state[key] = value.clone()
        out.append(state)
    return out


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m edmlab.phema", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory of a training with ema=power (or its phema/ folder)")
    parser.add_argument("--std", required=True, help="comma-separated relative EMA stds in (0, 0.289), e.g. 0.05,0.1")
    parser.add_argument("--at-kimg", type=float, default=None, help="reconstruct at the last snapshot ≤ this kimg")
    parser.add_argument("--out-dir", default=None, help="where to write network-phema-<std>.pt (default: the run)")
    args = parser.parse_args(argv)
    try:
        stds = [float(s) for s in args.std.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--std {args.std!r}: expected comma-separated numbers such as 0.03,0.06,0.12")
    try:
        for path in write_networks(args.run, stds, args.at_kimg, args.out_dir):
            print(path)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
