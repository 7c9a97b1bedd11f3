"""Signal scalings s(t) with s'(t) (EDM Table 1, "Scaling" row; Eq. 4).

x(t) = s(t)·x̂(t) where x̂ lives in the unscaled space of p(x; σ). A scaling is bound to the schedule
whose σ(t) it reads.
"""
import torch

from edmlab.design.schedules import Schedule, _as_tensor


class Scaling:
    """s(t) and s'(t) of one schedule; ``SCALINGS`` names each subclass."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def s(self, t):
        raise NotImplementedError

    def s_deriv(self, t):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.schedule!r})"


class NoScaling(Scaling):
    """s(t) = 1 (VE, EDM)."""

    def s(self, t):
        return torch.ones_like(_as_tensor(t))

    def s_deriv(self, t):
        return torch.zeros_like(_as_tensor(t))


class VPScaling(Scaling):
    """s(t) = 1/√(1 + σ(t)²), s'(t) = −σ(t)σ'(t)s(t)³ (variance preserving)."""

    def s(self, t):
        return 1 / (1 + self.schedule.sigma(t).square()).sqrt()

    def s_deriv(self, t):
        return -self.schedule.sigma(t) * self.schedule.sigma_deriv(t) * self.s(t) ** 3


class FlowScaling(Scaling):
    """s(t) = 1/(1 + σ(t)), s'(t) = −σ'(t)·s(t)²: with σ(t) = t/(1 − t) (``FlowSchedule``) s(t) = 1 − t, so the
    sampler's state is flow matching's x_t = (1 − t)·x₀ + t·ε."""

    def s(self, t):
        return 1 / (1 + self.schedule.sigma(t))

    def s_deriv(self, t):
        return -self.schedule.sigma_deriv(t) * self.s(t).square()


SCALINGS = {"none": NoScaling, "vp": VPScaling, "flow": FlowScaling}
