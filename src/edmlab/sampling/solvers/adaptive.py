"""An embedded adaptive solver: its NFE follows from the tolerance, per sample."""
import math

import torch

from edmlab.sampling.solvers.calls import DenoiserCalls, Solver, check_final_step, final_step_in_sigma

# Bogacki–Shampine 3(2) (Bogacki & Shampine 1989; Hairer, Nørsett & Wanner I, Table II.5.x): nodes c, stages a,
# 3rd-order weights b (first same as last), 2nd-order weights e.
BS32_C = (0.0, 0.5, 0.75, 1.0)
BS32_A = ((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9))
BS32_E = (7 / 24, 1 / 4, 1 / 3, 1 / 8)
MAX_STEPS = 10_000


def check_tolerance(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"adaptive needs {name} > 0, got {name}={value!r}")
    return float(value)


def sample_adaptive(denoiser, x, sigmas, *, rtol: float = 1e-3, atol: float = 1e-3,
                    h_init: float = 0.2, final_step: str = "euler", afs=None, callback=None,
                    denoiser_kwargs=None) -> torch.Tensor:
    """Bogacki–Shampine 3(2) with FSAL on EDM's ODE in u = log σ, dx/du = x − D(x; e^u), from σ_max to σ_min
    (the grid's first and last levels), each sample with its own step size: a step is accepted when
    ‖(x₃ − x₂)/(atol + rtol·max(|x|, |x₃|))‖_rms ≤ 1, and the next step is h·clip(0.9·err^{−1/3}, 0.2, 5)
    (Hairer, Nørsett & Wanner I, Sec. II.4). Only the samples still running are passed to the denoiser, so a
    sample's result and its NFE (3 per tried step, plus the first and final calls) do not depend on its batch;
    deciding which samples still run reads one flag per step from the device. It calls D between grid levels, so a denoiser's round_sigma (iDDPM's finite grid) is not applied to its steps."""
    sigmas = [float(s) for s in sigmas]
    x = x.clone()
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    h_init = check_tolerance("h_init", h_init)
    check_final_step(final_step)
    model = DenoiserCalls(denoiser, denoiser_kwargs, afs)
    kwargs = model.kwargs

    def f(xs, us, rows):
        sigma = us.exp()
        denoised = denoiser(xs, sigma, **{k: v[rows] for k, v in kwargs.items()}).to(xs.dtype)
        return xs - denoised

    batch, view = x.shape[0], (-1,) + (1,) * (x.dim() - 1)
    u_start, u_end = math.log(sigmas[0]), math.log(sigmas[-2])
    u = x.new_full((batch,), u_start)
    h = x.new_full((batch,), -h_init)
    k1 = x - model(x, sigmas[0], first=True) if model.afs else f(x, u, slice(None))
    for step in range(MAX_STEPS):
        rows = (u > u_end).nonzero()[:, 0]
        if len(rows) == 0:
            break
        xs, us, ks = x[rows], u[rows], [k1[rows]]
        hs = torch.maximum(h[rows], u_end - us)
        hv = hs.view(view)
        for c, a in zip(BS32_C[1:], BS32_A[1:]):
            xi = xs + hv * sum(coef * k for coef, k in zip(a, ks))
            ks.append(f(xi, us + c * hs if c < 1 else us + hs, rows))
        x3 = xi
        x2 = xs + hv * sum(coef * k for coef, k in zip(BS32_E, ks))
        scale = atol + rtol * torch.maximum(xs.abs(), x3.abs())
        err = ((x3 - x2) / scale).square().flatten(1).mean(1).sqrt()
        accept = err <= 1
        factor = (0.9 * err.clamp(min=1e-10) ** (-1 / 3)).clamp(0.2, 5.0)
        keep = accept.view(view)
        x[rows] = torch.where(keep, x3, xs)
        k1[rows] = torch.where(keep, ks[-1], ks[0])
        u[rows] = torch.where(accept, torch.where(hs == u_end - us, u.new_full((), u_end), us + hs), us)
        h[rows] = hs * factor
        if callback is not None:
            callback(dict(i=step, sigma=us.exp(), accepted=accept, x=x, denoised=x3 - ks[-1]))
    else:
        raise RuntimeError(f"adaptive: {MAX_STEPS} steps did not reach sigma_min; raise rtol={rtol} or atol={atol}")
    return final_step_in_sigma(model, x, sigmas[-2], final_step)[0]


ADAPTIVE = Solver("adaptive", sample_adaptive, fixed_grid=False, options=("rtol", "atol"))
