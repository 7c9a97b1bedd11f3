"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1), ``solver=consistency``.

Over the levels σ_0 > σ_1 > … > σ_{N−1} of the grid (σ_{N−1} = σ_min ends the walk), with f the network trained as a
consistency model (``EDMPrecond(boundary_sigma=ε)``) and x = σ_0·z_0:

    x̂ ← f(x, σ_0);   for n = 1 … N−2:   x ← x̂ + √(σ_n² − ε²)·z_n,   x̂ ← f(x, σ_n);   return x̂

N − 1 calls: 1 step is f(σ_max·z, σ_max); 2 steps re-noise once, at σ_1 (``discretization=custom
sampler.steps=[80,0.821,0.002]`` for ECT's CIFAR-10 choice; the EDM grid of 3 levels puts it at 2.5). z_n from
``generator`` (per-sample streams with ``edmlab.SeedStreams``). The network is refused unless it carries
``boundary_sigma``: an EDM denoiser's output is not a sample of the data after one call.
"""
import math

import torch

from edmlab.sampling.rng import noise_like
from edmlab.sampling.solvers.calls import DenoiserCalls, Solver

NOT_A_CONSISTENCY_MODEL = ("solver=consistency needs a network trained as a consistency model (objective=ict or ect, "
                           "whose preconditioning has boundary_sigma), and this one was not: sample it with an ODE "
                           "solver (solver=heun)")


def boundary_of(denoiser) -> float:
    """ε of a consistency model (its preconditioning's ``boundary_sigma``), else a ValueError."""
    epsilon = getattr(denoiser, "boundary_sigma", None)
    if epsilon is None:
        raise ValueError(NOT_A_CONSISTENCY_MODEL)
    return float(epsilon)


def sample_consistency(denoiser, x: torch.Tensor, sigmas, *, final_step: str = "none", afs=None, generator=None,
                       callback=None, denoiser_kwargs=None) -> torch.Tensor:
    """The module docstring's walk over ``sigmas`` = (σ_0, …, σ_{N−1}, 0)."""
    epsilon = boundary_of(denoiser)
    if final_step != "none":
        raise ValueError(f"solver=consistency ends with its last call of f; final_step={final_step!r} does not apply "
                         f"(leave it null)")
    if afs is not None:
        raise ValueError(f"afs={afs!r} does not apply to solver=consistency: its first call is its one-step sample")
    model = DenoiserCalls(denoiser, denoiser_kwargs)
    levels = [float(s) for s in sigmas[:-1]]
    denoised = x
    for i, sigma in enumerate(levels[:-1]):
        if i > 0:
            x = denoised + math.sqrt(max(sigma**2 - epsilon**2, 0.0)) * noise_like(denoised, generator)
        denoised = model(x, sigma)
        if callback is not None:
            callback(dict(i=i, sigma=sigma, sigma_next=levels[i + 1], x=x, denoised=denoised))
    return denoised


CONSISTENCY = Solver("consistency", sample_consistency, final_steps=("none",), needs=("generator",))
