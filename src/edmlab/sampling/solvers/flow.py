"""EDM's general probability-flow ODE and its churn (EDM Eq. 4, Algorithm 2):

    dx/dt = (σ'(t)/σ(t) + s'(t)/s(t))·x − σ'(t)·s(t)/σ(t)·D(x/s(t); σ(t)).
"""
import math
from dataclasses import dataclass

from edmlab.design.scalings import NoScaling, Scaling
from edmlab.design.schedules import LinearSchedule, Schedule


@dataclass(frozen=True)
class FlowPoint:
    """The ODE's coefficients at one time t: dx/dt = p·x − q·D(x/s; σ)."""

    t: float
    sigma: float
    s: float
    p: float
    q: float


@dataclass(frozen=True)
class ProbabilityFlow:
    """The probability-flow ODE of one schedule σ(t) and scaling s(t) (EDM Eq. 4)."""

    schedule: Schedule
    scaling: Scaling

    def at(self, t: float) -> FlowPoint:
        sigma = float(self.schedule.sigma(t))
        s = float(self.scaling.s(t))
        sigma_deriv = float(self.schedule.sigma_deriv(t)) if sigma > 0 else math.nan
        s_deriv = float(self.scaling.s_deriv(t)) if sigma > 0 else math.nan
        p = sigma_deriv / sigma + s_deriv / s if sigma > 0 else math.nan
        q = sigma_deriv * s / sigma if sigma > 0 else math.nan
        return FlowPoint(float(t), sigma, s, p, q)

    @property
    def is_sigma_time(self) -> bool:
        """σ(t) = t and s(t) = 1: EDM's own ODE dx/dσ = (x − D(x; σ))/σ."""
        return isinstance(self.schedule, LinearSchedule) and isinstance(self.scaling, NoScaling)


def sigma_grid(flow: ProbabilityFlow, t_steps, solver: str) -> list[float]:
    """The noise levels σ_0 > … > σ_{N−1} > σ_N = 0 of a solver that integrates dx/dσ (or dx/dλ) itself; such a
    solver is invariant to the warps σ(t), s(t), so any other schedule/scaling is refused rather than ignored."""
    if not flow.is_sigma_time:
        raise ValueError(f"solver={solver!r} integrates EDM's ODE in σ (or λ = −log σ) itself, so a schedule or "
                         f"scaling would change nothing: use schedule=linear scaling=none, got {flow.schedule!r}, "
                         f"{type(flow.scaling).__name__}")
    return [float(t) for t in t_steps]


@dataclass(frozen=True)
class Churn:
    """EDM's stochastic "churn" (Algorithm 2): at σ_i ∈ [S_min, S_max] raise the noise level to
    σ̂ = σ_i(1 + γ), γ = min(S_churn/N, √2 − 1), by adding fresh noise of std √(σ̂² − σ_i²)·S_noise."""

    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0

    @property
    def active(self) -> bool:
        return self.S_churn > 0

    def gamma(self, sigma: float, num_steps: int) -> float:
        if self.S_min <= sigma <= self.S_max:
            return min(self.S_churn / num_steps, math.sqrt(2) - 1)
        return 0.0
