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
