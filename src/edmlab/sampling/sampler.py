"""``sample()``: EDM's general sampler (the ``ablation_sampler`` of NVlabs/edm; EDM Algorithms 1 and 2) over
any schedule σ(t), scaling s(t), discretization and solver, plus the time grid it walks (``plan``)."""
import contextlib

import torch

from edmlab.design.guidance import GuidedDenoiser
from edmlab.sampling.planning import plan
from edmlab.sampling.solvers.calls import identity


def sample(denoiser, latents: torch.Tensor, *, generator=None, callback=None, class_labels: torch.Tensor | None = None,
           guide=None, guidance: float = 1.0, guidance_interval: tuple | None = None,
           guidance_interval_by: str = "sigma", **sampler_kwargs) -> torch.Tensor:
    """Draw samples by solving EDM's probability-flow ODE (or its churned SDE) from σ_max to 0.

    ``sampler_kwargs`` are those of ``plan`` (solver, discretization, schedule, scaling, num_steps | nfe, sigma_min,
    sigma_max, rho, S_churn, S_min, S_max, S_noise, final_step, afs, steps, shift, …, and the solver options of
    ``edmlab.sampling.solvers.OPTIONS``: alpha, max_order, rtol, atol, eta, noise_scale, solver_type). ``denoiser(x, sigma)`` returns D(x; σ) for ``sigma`` of shape [N]; its optional
    ``sigma_min``, ``sigma_max``, ``round_sigma`` and ``sigma_data`` are honoured. ``latents`` are unscaled N(0, I) draws; the
    sampler starts at x_0 = latents·σ(t_0)·s(t_0) and runs in float64 whatever the network's precision.
    ``num_steps`` noise levels (None: EDM's 18) or ``nfe`` denoiser calls (the solver picks its levels and
    ``final_step``); ``max_order``, ``final_step``, ``afs``, ``rtol``/``atol`` as ``edmlab.sampling.solvers`` documents.
    ``discretization="custom"`` walks ``steps`` (a σ list, largest first, or a steps file of
    ``edmlab.sampling.search_steps``). ``generator`` feeds the churn and ancestral/SDE noise: a ``torch.Generator``,
    or ``edmlab.SeedStreams`` for per-sample streams. ``callback`` receives a dict (i, sigma, x, denoised, …) after every step. ``guide``:
    a second denoiser, with D = D_guide + guidance·(D − D_guide) inside ``guidance_interval`` (None: everywhere):
    [σ_lo, σ_hi] for ``guidance_interval_by="sigma"``, or the steps [first, last] (0-based, both calls of each) for
    ``"step"``, the rule of Kynkäänniemi et al.'s released sampler (``edmlab.design.guidance``; wrap the denoiser in
    ``GuidedDenoiser`` yourself to count both networks' calls). Returns the samples in the latents' dtype.
    """
    if not isinstance(latents, torch.Tensor) or latents.dtype not in (torch.float32, torch.float64):
        got = latents.dtype if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise TypeError(f"latents must be a float32 or float64 tensor, got {got}")
    todo = plan(denoiser=denoiser, **sampler_kwargs)
    if guide is not None:
        denoiser = GuidedDenoiser(denoiser, guide, guidance, guidance_interval, guidance_interval_by)
    elif guidance != 1.0 or guidance_interval is not None:
        raise ValueError(f"guidance={guidance}, guidance_interval={guidance_interval} need a guide network: pass "
                         f"guide=<denoiser> (or leave guidance=1)")
    extra = {"round_sigma": getattr(denoiser, "round_sigma", identity), "generator": generator}
    extra = {k: v for k, v in extra.items() if k in todo.solver.needs}
    start = todo.flow.at(float(todo.t_steps[0]))
    x = latents.to(torch.float64) * (start.sigma * start.s)
    follow = getattr(denoiser, "following_steps", None)  # a GuidedDenoiser by step, possibly wrapped
    walk = follow(todo.num_steps, todo.solver.name, callback) if callable(follow) else contextlib.nullcontext(callback)
    with torch.no_grad(), walk as callback:
        x = todo.solver.solve(denoiser, x, *todo.grid, **todo.options, **extra, callback=callback,
                              denoiser_kwargs={} if class_labels is None else {"class_labels": class_labels})
    return x.to(latents.dtype)
