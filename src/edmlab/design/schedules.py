"""Noise schedules σ(t), with σ'(t) and σ⁻¹(σ) (EDM Table 1, "Schedule" row; Eq. 4).

Each schedule is a small object of pure functions over float64 tensors. All of them are warps of the
same (t, x) plane: they change the trajectories' shape, never the densities p(x; σ).
"""
import math

import torch


def _as_tensor(t) -> torch.Tensor:
    """float64, on t's device (host for Python numbers)."""
    return torch.as_tensor(t, dtype=torch.float64, device=t.device if isinstance(t, torch.Tensor) else "cpu")


class Schedule:
    """σ(t) with its derivative and inverse; ``SCHEDULES`` names each subclass (one row of the design table)."""

    @classmethod
    def for_range(cls, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> "Schedule":
        """The schedule a sampler over [σ_min, σ_max] uses: parameter-free schedules ignore the range."""
        return cls()

    def sigma(self, t):
        raise NotImplementedError

    def sigma_deriv(self, t):
        raise NotImplementedError

    def sigma_inv(self, sigma):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class LinearSchedule(Schedule):
    """σ(t) = t (EDM, DDIM): trajectories are straight lines toward D(x; σ) at high σ."""

    def sigma(self, t):
        return _as_tensor(t)

    def sigma_deriv(self, t):
        return torch.ones_like(_as_tensor(t))

    def sigma_inv(self, sigma):
        return _as_tensor(sigma)


class VESchedule(Schedule):
    """σ(t) = √t (variance exploding, Song et al. 2021): σ'(t) = ½/√t, σ⁻¹(σ) = σ²."""

    def sigma(self, t):
        return _as_tensor(t).sqrt()

    def sigma_deriv(self, t):
        return 0.5 / _as_tensor(t).sqrt()

    def sigma_inv(self, sigma):
        return _as_tensor(sigma).square()


class VPSchedule(Schedule):
    """σ(t) = √(exp(½β_d t² + β_min t) − 1) (variance preserving, EDM Table 1).

    σ'(t) = ½(β_min + β_d t)(σ + 1/σ);  σ⁻¹(σ) = (√(β_min² + 2β_d ln(1 + σ²)) − β_min)/β_d.
    Defaults β_d = 19.9, β_min = 0.1 give σ(1) ≈ 152.17 and σ(10⁻³) ≈ 0.0105.
    """

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1):
        if not beta_d > 0:
            raise ValueError(f"VP schedule needs beta_d > 0, got beta_d={beta_d}")
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)

    @classmethod
    def fit(cls, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> "VPSchedule":
        """The VP schedule through σ(ε_s) = σ_min and σ(1) = σ_max (EDM's ablation sampler).

        β_d = 2(ln(σ_min² + 1)/ε_s − ln(σ_max² + 1))/(ε_s − 1),  β_min = ln(σ_max² + 1) − ½β_d.

        For EDM's range (0.002, 80) this gives β_min < 0, so σ⁻¹(0) ≈ 5.4·10⁻⁴ rather than 0 and σ(t) is undefined on
        (0, 5.4·10⁻⁴); the final step to t_N = 0 still lands on σ = 0, as in NVlabs/edm.
        """
        if not 0 < epsilon_s < 1:
            raise ValueError(f"epsilon_s must lie in (0, 1), got {epsilon_s}")
        beta_d = 2 * (math.log(sigma_min**2 + 1) / epsilon_s - math.log(sigma_max**2 + 1)) / (epsilon_s - 1)
        beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
        return cls(beta_d, beta_min)

    @classmethod
    def for_range(cls, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> "VPSchedule":
        """Refit to the sampler's range, as EDM's ablation sampler (``fit``)."""
        return cls.fit(sigma_min, sigma_max, epsilon_s)

    def sigma(self, t):
        t = _as_tensor(t)
        return (0.5 * self.beta_d * t**2 + self.beta_min * t).expm1().sqrt()

    def sigma_deriv(self, t):
        t = _as_tensor(t)
        sigma = self.sigma(t)
        return 0.5 * (self.beta_min + self.beta_d * t) * (sigma + 1 / sigma)

    def sigma_inv(self, sigma):
        sigma = _as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * sigma.square().log1p()).sqrt() - self.beta_min) / self.beta_d

    def __repr__(self):
        return f"VPSchedule(beta_d={self.beta_d:.6g}, beta_min={self.beta_min:.6g})"


class FlowSchedule(Schedule):
    """σ(t) = t/(1 − t) on t ∈ (0, 1): rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2023; SD3),
    whose x_t = (1 − t)·x₀ + t·ε is s(t)·(x₀ + σ(t)·ε) with s(t) = 1 − t (``FlowScaling``).
    σ'(t) = 1/(1 − t)²,  σ⁻¹(σ) = σ/(1 + σ);  logit t = ln σ."""

    def sigma(self, t):
        t = _as_tensor(t)
        return t / (1 - t)

    def sigma_deriv(self, t):
        return 1 / (1 - _as_tensor(t)).square()

    def sigma_inv(self, sigma):
        sigma = _as_tensor(sigma)
        return sigma / (1 + sigma)


SCHEDULES = {"linear": LinearSchedule, "ve": VESchedule, "vp": VPSchedule, "flow": FlowSchedule}
