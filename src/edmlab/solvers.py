"""ODE/SDE solvers for EDM's general probability-flow ODE (EDM Eq. 4, Algorithms 1 and 2, Appendix D.2):

    dx/dt = (σ'(t)/σ(t) + s'(t)/s(t))·x − σ'(t)·s(t)/σ(t)·D(x/s(t); σ(t)).

A solver is a plain function ``solver(denoiser, x, t_steps, flow, ...)`` over a denoiser callable and a
precomputed time grid (the grid is chosen elsewhere, so solver and discretization vary independently).
All scalars of the grid are host-side float64, so the loop never synchronises with the device.
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .rng import noise_like
from .scalings import Scaling
from .schedules import Schedule


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


Denoiser = Callable[..., torch.Tensor]


def _derivative(denoiser, x, point: FlowPoint, denoiser_kwargs):
    sigma = x.new_full((x.shape[0],), point.sigma)
    denoised = denoiser(x if point.s == 1 else x / point.s, sigma, **denoiser_kwargs).to(x.dtype)
    return point.p * x - point.q * denoised, denoised


def _solve(denoiser, x, t_steps, flow: ProbabilityFlow, *, second_order: bool, alpha: float, churn: Churn,
           round_sigma, generator, callback, denoiser_kwargs):
    t_steps = [float(t) for t in t_steps]
    num_steps = len(t_steps) - 1
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        cur = flow.at(t_cur)
        hat = cur
        if churn.active:
            gamma = churn.gamma(cur.sigma, num_steps)
            if gamma > 0:
                sigma_hat = float(round_sigma(torch.tensor(cur.sigma * (1 + gamma), dtype=torch.float64)))
                hat = flow.at(float(flow.schedule.sigma_inv(sigma_hat)))
            # Noise is drawn at every step, as NVlabs/edm does, so seeds give the same images as there.
            eps = noise_like(x, generator)
            x = hat.s / cur.s * x + math.sqrt(max(hat.sigma**2 - cur.sigma**2, 0.0)) * hat.s * churn.S_noise * eps
        h = t_next - hat.t
        d_cur, denoised = _derivative(denoiser, x, hat, denoiser_kwargs)
        if not second_order or i == num_steps - 1:
            x = x + h * d_cur
        else:
            prime = flow.at(hat.t + alpha * h)
            d_prime, denoised = _derivative(denoiser, x + alpha * h * d_cur, prime, denoiser_kwargs)
            x = x + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
        if callback is not None:
            callback(dict(i=i, t=t_cur, t_hat=hat.t, t_next=t_next, sigma=cur.sigma, sigma_hat=hat.sigma,
                          sigma_next=float(flow.schedule.sigma(t_next)), x=x, denoised=denoised))
    return x


def sample_euler(denoiser: Denoiser, x: torch.Tensor, t_steps, flow: ProbabilityFlow, *, churn: Churn = Churn(),
                 round_sigma=lambda s: s, generator=None, callback=None, denoiser_kwargs=None, **_) -> torch.Tensor:
    """Euler's method, 1st order: x_{i+1} = x̂_i + (t_{i+1} − t̂_i)·dx/dt(x̂_i, t̂_i). NFE = N."""
    return _solve(denoiser, x, t_steps, flow, second_order=False, alpha=1.0, churn=churn, round_sigma=round_sigma,
                  generator=generator, callback=callback, denoiser_kwargs=denoiser_kwargs or {})


def sample_heun(denoiser: Denoiser, x: torch.Tensor, t_steps, flow: ProbabilityFlow, *, alpha: float = 1.0,
                churn: Churn = Churn(), round_sigma=lambda s: s, generator=None, callback=None,
                denoiser_kwargs=None, **_) -> torch.Tensor:
    """EDM's 2nd-order α-family (Algorithm 1; Appendix D.2): an Euler trial step to t' = t̂ + αh, then
    x_{i+1} = x̂ + h[(1 − 1/(2α))·d_i + 1/(2α)·d'].  α = 1 is Heun's trapezoid rule, α = ½ the midpoint
    method. The last step, to σ = 0, is Euler, so NFE = 2N − 1."""
    return _solve(denoiser, x, t_steps, flow, second_order=True, alpha=alpha, churn=churn, round_sigma=round_sigma,
                  generator=generator, callback=callback, denoiser_kwargs=denoiser_kwargs or {})


SOLVERS = {"euler": sample_euler, "heun": sample_heun}


def nfe(solver: str, num_steps: int) -> int:
    """Denoiser evaluations of one sampling run: N for Euler, 2N − 1 for Heun."""
    return num_steps if solver == "euler" else 2 * num_steps - 1
