"""Time-step discretizations: the noise levels σ_0 > … > σ_{N−1} visited by a sampler (EDM Table 1,
"Time steps" row; Eq. 5 and Appendix D.1), the few-step grids of DPM-Solver/DEIS/AMED, and explicit (searched)
grids. The final σ_N = 0 is appended by the sampler.

Each function returns a float64 tensor of N noise levels, largest first.
"""
import json
import math
from pathlib import Path

import torch

from edmlab.design.registry import choose
from edmlab.design.schedules import VPSchedule

DEFAULT_SIGMA_RANGE = {
    # (σ_min, σ_max) as EDM's ablation sampler defaults; vp is σ_vp(ε_s), σ_vp(1) of the standard VP schedule
    # (β_d=19.9, β_min=0.1), listed here at the default ε_s = 10⁻³ (``default_sigma_range`` follows ε_s).
    "vp": (float(VPSchedule().sigma(1e-3)), float(VPSchedule().sigma(1.0))),
    "ve": (0.02, 100.0),
    "iddpm": (0.002, 81.0),
    "edm": (0.002, 80.0),
    "logsnr": (0.002, 80.0),
    "time_uniform": (0.002, 80.0),
    "flow": (0.002, 80.0),
}
DISCRETIZATIONS = (*DEFAULT_SIGMA_RANGE, "custom")


def default_sigma_range(name: str, epsilon_s: float = 1e-3) -> tuple[float, float]:
    """(σ_min, σ_max) of EDM's ablation sampler for a named grid; for vp σ_min = σ_vp(ε_s) of the standard VP
    schedule (0.0105 at ε_s = 10⁻³, 0.00318 at ε_s = 10⁻⁴), as NVlabs/edm's generate.py."""
    if name not in DEFAULT_SIGMA_RANGE:
        raise ValueError(f"discretization {name!r} has no default sigma range: choose one of "
                         f"{sorted(DEFAULT_SIGMA_RANGE)}")
    if name == "vp":
        return float(VPSchedule().sigma(epsilon_s)), DEFAULT_SIGMA_RANGE["vp"][1]
    return DEFAULT_SIGMA_RANGE[name]


def _fractions(num_steps: int) -> torch.Tensor:
    """i/(N−1) for i = 0…N−1 (a single step sits at i/(N−1) = 0)."""
    if num_steps == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.arange(num_steps, dtype=torch.float64) / (num_steps - 1)


def edm_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ (EDM Eq. 5). ρ = 7 is the paper's choice;
    ρ = 1 is uniform in σ, ρ → ∞ approaches the geometric (VE) grid."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + _fractions(num_steps) * (b - a)) ** rho


def ve_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Geometric in σ: σ_i² = σ_max²·(σ_min²/σ_max²)^{i/(N−1)} (Song et al. 2021, VE); i.e. uniform in
    log σ = −λ, DPM-Solver's "logSNR" grid (``logsnr_sigmas``)."""
    return sigma_max * (sigma_min / sigma_max) ** _fractions(num_steps)


def logsnr_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in λ = −log σ (half the log-SNR) from σ_max to σ_min (DPM-Solver, Lu et al. 2022, Sec. 3.3;
    UniPC's and DPM-Solver++'s default grid): the geometric grid of ``ve_sigmas`` over EDM's range."""
    return ve_sigmas(num_steps, sigma_min, sigma_max)


def time_uniform_sigmas(num_steps: int, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3,
                        rho: float = 1.0) -> torch.Tensor:
    """σ_i = σ_vp(t_i), t_i = (1 + i/(N−1)·(ε_s^{1/ρ} − 1))^ρ: uniform in VP time for ρ = 1, "quadratic" for ρ = 2
    (DEIS, Zhang & Chen 2023; AMED's ``time_uniform``). The VP schedule is refit through σ_vp(ε_s) = σ_min and
    σ_vp(1) = σ_max (``VPSchedule.fit``; for EDM's range (0.002, 80) and ε_s = 10⁻³: β_d ≈ 17.54, β_min ≈ −0.0048)."""
    t = (1 + _fractions(num_steps) * (epsilon_s ** (1 / rho) - 1)) ** rho
    return VPSchedule.fit(sigma_min, sigma_max, epsilon_s).sigma(t)


def vp_sigmas(num_steps: int, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> torch.Tensor:
    """Uniform in t from 1 to ε_s, σ_i = σ_vp(t_i), with β_d, β_min refit so σ_vp(ε_s)=σ_min, σ_vp(1)=σ_max
    (EDM Table 1, VP): ``time_uniform_sigmas`` with ρ = 1."""
    return time_uniform_sigmas(num_steps, sigma_min, sigma_max, epsilon_s, rho=1.0)


def load_steps(path) -> dict:
    """A steps file (JSON, written by ``python -m edmlab.cli.search_steps``): ``{"sigmas": [σ_0, …, σ_{N−1}], "solver",
    "nfe", "final_step", "model", …}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"steps file {path} does not exist; write one with python -m edmlab.cli.search_steps "
                                f"ckpt=... solver=... nfe=... out={path}, or give the σ list itself")
    try:
        record = json.loads(path.read_text())
        return record | {"sigmas": [float(s) for s in record["sigmas"]]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"steps file {path} is not a steps file (JSON with a 'sigmas' list): {error}") from None


def custom_sigmas(steps, sigma_min: float = 0.0, sigma_max: float = math.inf) -> torch.Tensor:
    """An explicit grid: ``steps`` is the list σ_0 > … > σ_{N−1} > 0 or the path of a steps file (``load_steps``).
    Every σ_i must lie in the network's range [sigma_min, sigma_max]."""
    if steps is None:
        raise ValueError("discretization=custom needs steps: a list of noise levels (largest first) or the path "
                         "of a steps file written by python -m edmlab.cli.search_steps")
    source = f"steps file {steps}" if isinstance(steps, (str, Path)) else "custom steps"
    values = load_steps(steps)["sigmas"] if isinstance(steps, (str, Path)) else [float(s) for s in steps]
    sigmas = torch.tensor(values, dtype=torch.float64)
    if sigmas.ndim != 1 or len(sigmas) == 0 or not bool(sigmas.isfinite().all()):
        raise ValueError(f"{source} must be a non-empty list of finite noise levels, got {values}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        i = int((sigmas[1:] >= sigmas[:-1]).nonzero()[0])
        raise ValueError(f"{source} must be strictly decreasing, but sigma[{i}]={values[i]} is followed by "
                         f"sigma[{i + 1}]={values[i + 1]}")
    if not float(sigmas[-1]) > 0:
        raise ValueError(f"{source} must be positive (the sampler appends sigma=0 itself), got {values[-1]}")
    outside = [s for s in values if not sigma_min <= s <= sigma_max]
    if outside:
        raise ValueError(f"{source}: sigma={outside[0]} leaves the network's range [{sigma_min}, {sigma_max}]")
    return sigmas


def iddpm_grid(C_1: float = 0.001, C_2: float = 0.008, M: int = 1000) -> torch.Tensor:
    """The M+1 noise levels u_0 > … > u_M = 0 of improved DDPM's cosine schedule (EDM Appendix C.3.4).

    ᾱ(j) = sin²(½π j/(M(C_2 + 1))),  u_{j−1} = √((u_j² + 1)/max(ᾱ(j−1)/ᾱ(j), C_1) − 1).
    With the defaults u_{M−1} ≈ 0.006425 and u_0 ≈ 20291.
    """
    def alpha_bar(j):
        return math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2

    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
    return torch.tensor(u, dtype=torch.float64, device="cpu")


def iddpm_sigmas(num_steps: int, sigma_min: float, sigma_max: float, C_1: float = 0.001, C_2: float = 0.008,
                 M: int = 1000) -> torch.Tensor:
    """Every ⌊(len−1)/(N−1)·i⌉-th u_j among those in [σ_min, σ_max] (EDM Table 1, iDDPM)."""
    u = iddpm_grid(C_1, C_2, M)
    u = u[(u >= sigma_min) & (u <= sigma_max)]
    if len(u) == 0:
        raise ValueError(f"no iDDPM noise level lies in [sigma_min={sigma_min}, sigma_max={sigma_max}]")
    index = (_fractions(num_steps) * (len(u) - 1)).round().long()
    return u[index]


def flow_sigmas(num_steps: int, sigma_min: float, sigma_max: float, shift: float = 1.0) -> torch.Tensor:
    """Uniform in flow time t = σ/(1 + σ) from t(σ_max) to t(σ_min), with SD3's timestep shift α (Esser et al. 2024,
    Eq. 23; diffusers' ``FlowMatchEulerDiscreteScheduler(shift=α)``): t' = α·t/(1 + (α − 1)·t), σ_i = t'/(1 − t'),
    i.e. σ' = α·σ. α = 1 is rectified flow's uniform grid; SD3 samples 1024² images with α = 3."""
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not shift > 0 or not math.isfinite(shift):
        raise ValueError(f"shift must be a finite number > 0 (1: no shift; SD3 uses 3 at 1024²), got shift={shift!r}")
    t_max, t_min = sigma_max / (1 + sigma_max), sigma_min / (1 + sigma_min)
    t = t_max + _fractions(num_steps) * (t_min - t_max)
    t = shift * t / (1 + (shift - 1) * t)
    return t / (1 - t)


# Each analytic grid and the sampler settings it reads (besides N and the σ range).
ANALYTIC = {"edm": (edm_sigmas, ("rho",)), "ve": (ve_sigmas, ()), "vp": (vp_sigmas, ("epsilon_s",)),
            "iddpm": (iddpm_sigmas, ("C_1", "C_2", "M")), "logsnr": (logsnr_sigmas, ()),
            "time_uniform": (time_uniform_sigmas, ("epsilon_s", "rho")), "flow": (flow_sigmas, ("shift",))}


def discretize(name: str, num_steps: int, sigma_min: float, sigma_max: float, *, rho: float = 7.0,
               epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
               shift: float = 1.0) -> torch.Tensor:
    """The named analytic discretization's N noise levels (``ANALYTIC``), each given the settings it reads
    (``rho`` is also the time exponent of time_uniform)."""
    grid, reads = choose("discretization", name, ANALYTIC)
    settings = dict(rho=rho, epsilon_s=epsilon_s, C_1=C_1, C_2=C_2, M=M, shift=shift)
    return grid(num_steps, sigma_min, sigma_max, **{k: settings[k] for k in reads})
