"""Training noise distributions p_train(σ) (EDM Table 1, "Noise distribution" row). Each draws σ for a batch."""
import math

import torch

from edmlab.design.schedules import VPSchedule


class NoiseDistribution:
    def sample(self, n: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        raise NotImplementedError


class VPNoise(NoiseDistribution):
    """t ~ U(ε_t, 1), σ = σ_vp(t)."""

    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5):
        if not 0 < epsilon_t < 1:
            raise ValueError(f"epsilon_t must lie in (0, 1), got epsilon_t={epsilon_t}")
        self.schedule, self.epsilon_t = VPSchedule(beta_d, beta_min), epsilon_t

    def sample(self, n, generator=None, device="cpu"):
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        return self.schedule.sigma(1 + u * (self.epsilon_t - 1)).to(torch.float32)


class VENoise(NoiseDistribution):
    """ln σ ~ U(ln σ_min, ln σ_max)."""

    def __init__(self, sigma_min=0.02, sigma_max=100.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sample(self, n, generator=None, device="cpu"):
        u = torch.rand(n, generator=generator, device=device)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** u


def _t_range(t_min: float, t_max: float) -> tuple[float, float]:
    if not 0 < t_min < t_max < 1:
        raise ValueError(f"need 0 < t_min < t_max < 1 (σ = t/(1 − t) is 0 and ∞ at the ends), got t_min={t_min}, "
                         f"t_max={t_max}")
    return float(t_min), float(t_max)


class LogitNormalNoise(NoiseDistribution):
    """SD3's rf/lognorm(m, s) (Esser et al. 2024, Sec. 3.1): logit t ~ N(m, s²), σ = t/(1 − t). Since
    logit t = ln σ, this is EDM's lognormal p_train with P_mean = m, P_std = s; σ is drawn as exp(u), which is
    exact where sigmoid(u) would round to 1. Defaults m = 0, s = 1 (SD3's best)."""

    def __init__(self, m: float = 0.0, s: float = 1.0):
        if not s > 0:
            raise ValueError(f"noise_distribution.s must be > 0, got s={s}")
        self.m, self.s = float(m), float(s)

    def sample(self, n, generator=None, device="cpu"):
        return (torch.randn(n, generator=generator, device=device) * self.s + self.m).exp()


class ModeNoise(NoiseDistribution):
    """SD3's rf/mode(scale) (Sec. 3.1, "mode sampling with heavy tails"): u ~ U(0, 1),
    t = 1 − u − scale·(cos²(πu/2) − 1 + u), σ = t/(1 − t), with t kept in [t_min, t_max]. Monotone for
    −1 ≤ scale ≤ 2/(π − 2); 0 is uniform in t, diffusers' default 1.29."""

    def __init__(self, scale: float = 1.29, t_min: float = 1e-4, t_max: float = 1 - 1e-4):
        if not -1 <= scale <= 2 / (math.pi - 2):
            raise ValueError(f"noise_distribution.scale={scale} must lie in [-1, 2/(π − 2) ≈ 1.752] (a monotone map)")
        self.scale, (self.t_min, self.t_max) = float(scale), _t_range(t_min, t_max)

    def sample(self, n, generator=None, device="cpu"):
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        t = 1 - u - self.scale * (torch.cos(math.pi / 2 * u).square() - 1 + u)
        t = t.clamp(self.t_min, self.t_max)
        return (t / (1 - t)).to(torch.float32)


class UniformTNoise(NoiseDistribution):
    """Rectified flow's t ~ U(t_min, t_max) (Liu et al. 2022), σ = t/(1 − t): p_train(σ) = 1/(1 + σ)² inside."""

    def __init__(self, t_min: float = 1e-4, t_max: float = 1 - 1e-4):
        self.t_min, self.t_max = _t_range(t_min, t_max)

    def sample(self, n, generator=None, device="cpu"):
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        t = self.t_min + (self.t_max - self.t_min) * u
        return (t / (1 - t)).to(torch.float32)


class EDMNoise(NoiseDistribution):
    """ln σ ~ N(P_mean, P_std²), EDM's defaults P_mean = −1.2, P_std = 1.2."""

    def __init__(self, P_mean=-1.2, P_std=1.2):
        if not P_std > 0:
            raise ValueError(f"P_std must be > 0, got P_std={P_std}")
        self.P_mean, self.P_std = P_mean, P_std

    def sample(self, n, generator=None, device="cpu"):
        return (torch.randn(n, generator=generator, device=device) * self.P_std + self.P_mean).exp()

    def quantile(self, q: float) -> float:
        """σ at probability q: exp(P_mean + P_std·Φ⁻¹(q))."""
        return math.exp(self.P_mean + self.P_std * math.sqrt(2) * torch.erfinv(torch.tensor(2 * q - 1.0)).item())
