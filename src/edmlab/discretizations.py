"""Time-step discretizations: the noise levels σ_0 > … > σ_{N−1} visited by a sampler (EDM Table 1,
"Time steps" row; Eq. 5 and Appendix D.1). The final σ_N = 0 is appended by the sampler.

Each function returns a float64 tensor of N noise levels, largest first.
"""
import math

import torch

from .schedules import VPSchedule

DEFAULT_SIGMA_RANGE = {
    # (σ_min, σ_max) as EDM's ablation sampler defaults; vp is σ_vp(ε_s = 10⁻³), σ_vp(1) for β_d=19.9, β_min=0.1.
    "vp": (float(VPSchedule().sigma(1e-3)), float(VPSchedule().sigma(1.0))),
    "ve": (0.02, 100.0),
    "iddpm": (0.002, 81.0),
    "edm": (0.002, 80.0),
}


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
    """Geometric in σ: σ_i² = σ_max²·(σ_min²/σ_max²)^{i/(N−1)} (Song et al. 2021, VE)."""
    return sigma_max * (sigma_min / sigma_max) ** _fractions(num_steps)


def vp_sigmas(num_steps: int, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> torch.Tensor:
    """Uniform in t from 1 to ε_s, σ_i = σ_vp(t_i), with β_d, β_min refit so σ_vp(ε_s)=σ_min, σ_vp(1)=σ_max."""
    t = 1 + _fractions(num_steps) * (epsilon_s - 1)
    return VPSchedule.fit(sigma_min, sigma_max, epsilon_s).sigma(t)


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


def discretize(name: str, num_steps: int, sigma_min: float, sigma_max: float, *, rho: float = 7.0,
               epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000) -> torch.Tensor:
    """The named discretization's N noise levels."""
    if name == "edm":
        return edm_sigmas(num_steps, sigma_min, sigma_max, rho)
    if name == "ve":
        return ve_sigmas(num_steps, sigma_min, sigma_max)
    if name == "vp":
        return vp_sigmas(num_steps, sigma_min, sigma_max, epsilon_s)
    if name == "iddpm":
        return iddpm_sigmas(num_steps, sigma_min, sigma_max, C_1, C_2, M)
    raise ValueError(f"unknown discretization {name!r}: choose one of {sorted(DEFAULT_SIGMA_RANGE)}")
