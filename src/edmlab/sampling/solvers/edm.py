"""EDM's own solvers over the general probability-flow ODE of any σ(t), s(t) (EDM Algorithms 1 and 2,
Appendix D.2; NVlabs/edm's ``ablation_sampler``): Euler and the 2nd-order α-family, with churn.

A solver is a plain function ``solver(denoiser, x, t_steps, flow, ...)`` over a denoiser callable and a
precomputed time grid t_0 > … > t_{N−1} > t_N = 0 (the grid is chosen elsewhere, so solver and discretization vary
independently). All scalars of the grid are host-side float64, so the loop never synchronises with the device.
"""
import math
from typing import Callable

import torch

from edmlab.sampling.rng import noise_like
from edmlab.sampling.solvers.calls import DenoiserCalls, Solver, check_final_step, identity
from edmlab.sampling.solvers.flow import Churn, FlowPoint, ProbabilityFlow

Denoiser = Callable[..., torch.Tensor]


def _derivative(model: DenoiserCalls, x, point: FlowPoint, first: bool):
    """dx/dt = p·x − q·D(x/s; σ) at one point (EDM Eq. 4), and the D it used."""
    denoised = model(x if point.s == 1 else x / point.s, point.sigma, first)
    return point.p * x - point.q * denoised, denoised


def _solve(denoiser, x, t_steps, flow: ProbabilityFlow, *, second_order: bool, alpha: float, churn: Churn,
           final_step: str, afs, round_sigma, generator, callback, denoiser_kwargs):
    model = DenoiserCalls(denoiser, denoiser_kwargs, afs)
    t_steps = [float(t) for t in t_steps]
    num_steps = len(t_steps) - 1
    taken = num_steps - 1 if check_final_step(final_step) in ("none", "denoise") else num_steps
    for i in range(taken):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
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
        d_cur, denoised = _derivative(model, x, hat, first=i == 0)
        if not second_order or i == num_steps - 1:
            x = x + h * d_cur
        else:
            prime = flow.at(hat.t + alpha * h)
            d_prime, denoised = _derivative(model, x + alpha * h * d_cur, prime, first=False)
            x = x + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
        if callback is not None:
            callback(dict(i=i, t=t_cur, t_hat=hat.t, t_next=t_next, sigma=cur.sigma, sigma_hat=hat.sigma,
                          sigma_next=float(flow.schedule.sigma(t_next)), x=x, denoised=denoised))
    if taken == num_steps:
        return x
    last = flow.at(t_steps[-2])
    if final_step == "none":
        return x / last.s
    denoised = model(x / last.s, last.sigma, first=taken == 0)
    if callback is not None:
        callback(dict(i=taken, t=last.t, t_hat=last.t, t_next=0.0, sigma=last.sigma, sigma_hat=last.sigma,
                      sigma_next=0.0, x=denoised, denoised=denoised))
    return denoised


def sample_euler(denoiser: Denoiser, x: torch.Tensor, t_steps, flow: ProbabilityFlow, *, churn: Churn = Churn(),
                 final_step: str = "euler", afs=None, round_sigma=identity, generator=None, callback=None,
                 denoiser_kwargs=None) -> torch.Tensor:
    """Euler's method, 1st order: x_{i+1} = x̂_i + (t_{i+1} − t̂_i)·dx/dt(x̂_i, t̂_i) (EDM Algorithm 2 without the
    correction). Any schedule and scaling. NFE = N (final_step="euler"/"denoise"), N − 1 ("none"), −1 with afs."""
    return _solve(denoiser, x, t_steps, flow, second_order=False, alpha=1.0, churn=churn, final_step=final_step,
                  afs=afs, round_sigma=round_sigma, generator=generator, callback=callback,
                  denoiser_kwargs=denoiser_kwargs)


def sample_heun(denoiser: Denoiser, x: torch.Tensor, t_steps, flow: ProbabilityFlow, *, alpha: float = 1.0,
                churn: Churn = Churn(), final_step: str = "euler", afs=None, round_sigma=identity, generator=None,
                callback=None, denoiser_kwargs=None) -> torch.Tensor:
    """EDM's 2nd-order α-family (Algorithm 1; Appendix D.2): an Euler trial step to t' = t̂ + αh, then
    x_{i+1} = x̂ + h[(1 − 1/(2α))·d_i + 1/(2α)·d'].  α = 1 is Heun's trapezoid rule, α = ½ the midpoint
    method. Any schedule and scaling. The last step, to σ = 0, is Euler, so NFE = 2N − 1 (final_step="euler" or
    "denoise"), 2(N − 1) ("none"), one less with afs."""
    return _solve(denoiser, x, t_steps, flow, second_order=True, alpha=alpha, churn=churn, final_step=final_step,
                  afs=afs, round_sigma=round_sigma, generator=generator, callback=callback,
                  denoiser_kwargs=denoiser_kwargs)


EULER = Solver("euler", sample_euler, any_flow=True, options=("churn",), needs=("round_sigma", "generator"))
HEUN = Solver("heun", sample_heun, calls_per_step=2, any_flow=True, options=("alpha", "churn"),
              needs=("round_sigma", "generator"))
