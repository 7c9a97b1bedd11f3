"""Searched time steps: the σ grid of one solver and NFE, found on the model itself.

    python -m edmlab.cli.search_steps <run | network.pt | bench:<preset>> --solver ipndm --nfe 10 [--out steps.json]
        [--final-step euler --afs zero --latents 256 --holdout 512 --fine 61 --teacher-substeps 4 --iters 300 --seed 0]
        [--objective mean|quantile|mse|mix --quantile 0.99 --tail-weight 1]

1. Teacher (GITS, Chen et al. 2024, Sec. 4): Heun on a fine EDM grid (ρ = 7, ``fine`` levels, each interval split
   into ``teacher_substeps`` Heun steps) from ``latents`` N(0, I) draws; on a bench the denoiser is the exact one.
2. Dynamic programming (GITS): among the fine levels, the path σ_max = σ̃_0 > … > σ̃_{N−1} = σ_min of N levels whose
   summed local error is least; the local error of i → j is R_k(‖x̃_j − Φ(x̃_i; σ̃_i → σ̃_j)‖) over the teacher
   states, Φ the first-order (DDIM) step x + (σ_j/σ_i − 1)(x − D(x; σ_i)), which reuses the teacher's D and costs no
   call, and R the objective's reduction over the samples k (``objective_reduction``; GITS: the mean).
3. Refinement (LD3's objective, Tong et al. 2025, minimised without gradients): from the best of the GITS grid and
   the analytic grids (edm, logsnr, time_uniform) on the tuning latents, Nelder–Mead on the log-σ gaps of the
   interior levels, the objective being R_k(‖x_k − x*_k‖) of the endpoints of the actual solver run with
   ``edmlab.sample`` (its NFE, final step and AFS) against the teacher's endpoints x*_k. R = mean (LD3's, the
   default) rewards the bulk; ``quantile``, ``mse`` and ``mix`` weigh the tail, where the samples that a coarse
   grid sends to another mode of the data lie.
4. Score: the searched grid and every analytic grid at the same NFE, on ``holdout`` OTHER latents (median, mean,
   RMS and the objective of ‖x − x*‖). The steps file records the grid, solver, nfe, final_step, afs, model, the
   objective and these scores; the sampler reads it with ``discretization=custom steps=<file>`` (``sampler.steps=``
   in the configs).
"""
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from edmlab.design.discretizations import edm_sigmas
from edmlab.sampling.planning import plan, sigma_range, sigma_steps
from edmlab.sampling.sampler import sample

ANALYTIC = ("edm", "logsnr", "time_uniform")
OBJECTIVES = ("mean", "quantile", "mse", "mix")


def mean_error(errors: torch.Tensor) -> torch.Tensor:
    """(1/K) Σ_k e_k over the last dimension: the search's default objective."""
    return errors.mean(-1)


def objective_reduction(objective: str = "mean", quantile: float = 0.99, tail_weight: float = 1.0):
    """The reduction R(e) over the last dimension (the samples k) of per-sample errors e_k that the search minimises:

        mean      R = (1/K) Σ_k e_k                      (GITS' and LD3's objective)
        quantile  R = Q_q(e)                             (q = ``quantile``)
        mse       R = (1/K) Σ_k e_k²
        mix       R = (1/K) Σ_k e_k + w·Q_q(e)           (w = ``tail_weight``)

    Q_q is the q-quantile with linear interpolation between order statistics (``torch.quantile``, numpy's
    default): with e sorted ascending, h = q·(K − 1), Q_q = e_⌊h⌋ + (h − ⌊h⌋)(e_⌊h⌋+1 − e_⌊h⌋)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective={objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile={quantile} must lie strictly between 0 and 1, e.g. quantile=0.99")
    if not tail_weight >= 0.0:
        raise ValueError(f"tail_weight={tail_weight} must be >= 0, e.g. tail_weight=1")
    tail = lambda e: torch.quantile(e, quantile, dim=-1)  # noqa: E731
    return {"mean": mean_error,
            "quantile": tail,
            "mse": lambda e: mean_error(e.square()),
            "mix": lambda e: mean_error(e) + tail_weight * tail(e)}[objective]


def objective_record(objective: str, quantile: float, tail_weight: float) -> dict:
    """The objective's name and the parameters it uses, as the steps file records them."""
    used = {"quantile": ("quantile",), "mix": ("quantile", "tail_weight")}.get(objective, ())
    return {"name": objective} | {key: {"quantile": quantile, "tail_weight": tail_weight}[key] for key in used}


@dataclass
class Teacher:
    """Teacher states ``states[m]`` at the fine levels ``sigmas[m]`` (largest first), the denoiser's output there
    and the endpoints (σ = 0) of the latents (unscaled N(0, I) draws) and class labels."""

    sigmas: torch.Tensor
    states: torch.Tensor
    denoised: torch.Tensor
    endpoints: torch.Tensor
    latents: torch.Tensor
    class_labels: torch.Tensor | None


def draw_latents(shape, count: int, seed: int, label_dim: int = 0):
    """``count`` latents of ``shape`` (float64) and, for a conditional model, one-hot random classes."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(count, *shape, generator=generator, dtype=torch.float64)
    if not label_dim:
        return latents, None
    classes = torch.randint(label_dim, (count,), generator=generator)
    return latents, torch.nn.functional.one_hot(classes, label_dim).to(torch.float64)


def teacher(denoiser, latents, class_labels, sigma_min: float, sigma_max: float, fine: int = 61,
            substeps: int = 4) -> Teacher:
    """Heun over the ρ = 7 grid of (fine − 1)·substeps + 1 levels, which holds the ``fine``-level ρ = 7 grid at
    every ``substeps``-th level (both are uniform in σ^{1/ρ}), recording the states there."""
    grid = edm_sigmas((fine - 1) * substeps + 1, sigma_min, sigma_max)
    states = [latents * sigma_max]
    record = lambda step: states.append(step["x"]) if (step["i"] + 1) % substeps == 0 else None  # noqa: E731
    endpoints = sample(denoiser, latents, solver="heun", discretization="custom", steps=grid.tolist(),
                       callback=record, class_labels=class_labels)
    states = torch.stack(states[:fine])
    kwargs = {} if class_labels is None else {"class_labels": class_labels}
    with torch.no_grad():
        denoised = torch.stack([denoiser(x, x.new_full((len(x),), float(s)), **kwargs).to(torch.float64)
                                for x, s in zip(states, grid[::substeps])])
    return Teacher(grid[::substeps].clone(), states, denoised, endpoints.to(torch.float64), latents, class_labels)


def local_errors(t: Teacher, reduce=mean_error) -> torch.Tensor:
    """cost[i, j] = R_k(‖x̃_j − Φ(x̃_i; σ_i → σ_j)‖) for i < j (inf elsewhere), Φ the first-order DDIM step and R
    the reduction over the samples (``objective_reduction``; default the mean E_k)."""
    fine = len(t.sigmas)
    cost = torch.full((fine, fine), math.inf, dtype=torch.float64)
    flat_x, flat_d = t.states.flatten(2), t.denoised.flatten(2)
    for i in range(fine - 1):
        ratio = (t.sigmas[i + 1:] / t.sigmas[i]).reshape(-1, 1, 1)
        step = flat_d[i] + ratio * (flat_x[i] - flat_d[i])
        cost[i, i + 1:] = reduce((step - flat_x[i + 1:]).norm(dim=-1))
    return cost


def dp_path(cost: torch.Tensor, levels: int) -> list[int]:
    """The indices 0 = m_0 < … < m_{levels−1} = M − 1 minimising Σ cost[m_k, m_{k+1}] (GITS' dynamic programming)."""
    fine = cost.shape[0]
    if not 2 <= levels <= fine:
        raise ValueError(f"a grid of {levels} levels cannot be chosen among fine={fine} levels; raise fine")
    best = torch.full((levels, fine), math.inf, dtype=torch.float64)
    parent = torch.zeros((levels, fine), dtype=torch.long)
    best[0, 0] = 0.0
    for k in range(1, levels):
        total = best[k - 1][:, None] + cost  # [from, to]
        best[k], parent[k] = total.min(0)
    path = [fine - 1]
    for k in range(levels - 1, 0, -1):
        path.append(int(parent[k, path[-1]]))
    return path[::-1]


def endpoint_errors(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-sample distance ‖x_k − x*_k‖ over all dimensions."""
    return (x.to(torch.float64) - reference).flatten(1).norm(dim=1)


def run(denoiser, t: Teacher, sigmas, sampler: dict) -> torch.Tensor:
    """Per-sample endpoint errors of ``sampler`` on the custom grid ``sigmas`` against the teacher."""
    x = sample(denoiser, t.latents, discretization="custom", steps=[float(s) for s in sigmas],
               class_labels=t.class_labels, **sampler)
    errors = endpoint_errors(x, t.endpoints)
    return torch.where(errors.isfinite(), errors, torch.full_like(errors, 1e6))


def _grid_from_gaps(logits: np.ndarray, sigma_min: float, sigma_max: float) -> list[float]:
    """σ_max·exp(−cumsum(softmax(v))·log(σ_max/σ_min)): strictly decreasing from σ_max to σ_min for any v."""
    gaps = np.exp(logits - logits.max())
    fractions = np.concatenate([[0.0], np.cumsum(gaps / gaps.sum())])
    fractions[-1] = 1.0
    return (sigma_max * np.exp(-fractions * math.log(sigma_max / sigma_min))).tolist()


def refine(denoiser, t: Teacher, sigmas, sampler: dict, iters: int, reduce=mean_error) -> list[float]:
    """Nelder–Mead on the log-σ gaps (endpoints fixed) minimising R(endpoint errors) on the teacher's latents, R the
    reduction over the samples (``objective_reduction``; default the mean)."""
    from scipy.optimize import minimize

    sigmas = [float(s) for s in sigmas]
    if iters < 1 or len(sigmas) < 3:
        return sigmas
    lo, hi = sigmas[-1], sigmas[0]
    start = np.log(-np.diff(np.log(sigmas)))

    def objective(v):
        return float(reduce(run(denoiser, t, _grid_from_gaps(v, lo, hi), sampler)))

    result = minimize(objective, start, method="Nelder-Mead",
                      options=dict(maxfev=iters, xatol=1e-3, fatol=1e-7, adaptive=True))
    best = result.x if result.fun < objective(start) else start
    return _grid_from_gaps(best, lo, hi)


def summary(errors: torch.Tensor, reduce=mean_error) -> dict:
    return {"median": float(errors.median()), "mean": float(errors.mean()), "rms": float(errors.square().mean().sqrt()),
            "objective": float(reduce(errors))}


def sampler_options(solver: str, nfe: int, final_step=None, afs=None, max_order=None, denoiser=None,
                    sigma_min: float = 0.002, sigma_max: float = 80.0) -> tuple[int, dict]:
    """(levels N, ``edmlab.sample`` options) that spend exactly ``nfe`` calls with ``solver``."""
    extra = {"max_order": max_order} if max_order else {}
    chosen = plan(solver=solver, nfe=nfe, final_step=final_step, afs=afs, sigma_min=sigma_min, sigma_max=sigma_max,
                  denoiser=denoiser, **extra)
    return chosen.num_steps, {"solver": solver, "final_step": chosen.final_step, "afs": afs} | extra


def search_grid(denoiser, tune: Teacher, levels: int, sampler: dict, iters: int = 300,
                reduce=mean_error) -> tuple[list, list]:
    """(GITS grid, refined grid) of ``levels`` noise levels for ``sampler`` on the teacher ``tune``, both minimising
    the reduction ``reduce`` (``objective_reduction``; default the mean) of the per-sample errors; the refinement
    starts from whichever of the GITS grid and the analytic grids has the least of it on the teacher's latents."""
    dp = tune.sigmas[dp_path(local_errors(tune, reduce), levels)].tolist()
    lo, hi = float(tune.sigmas[-1]), float(tune.sigmas[0])
    starts = [dp] + [analytic_grid(name, levels, lo, hi, denoiser) for name in ANALYTIC]
    start = min(starts, key=lambda grid: float(reduce(run(denoiser, tune, grid, sampler))))
    return dp, refine(denoiser, tune, start, sampler, iters, reduce)


def analytic_grid(name: str, levels: int, sigma_min: float, sigma_max: float, denoiser=None) -> list[float]:
    """The ``levels`` noise levels of an analytic discretization (time_uniform with ρ = 1)."""
    return sigma_steps(levels, discretization=name, sigma_min=sigma_min, sigma_max=sigma_max, denoiser=denoiser,
                       **({"rho": 1.0} if name == "time_uniform" else {}))[:-1].tolist()


def search(denoiser, shape, *, solver: str = "ipndm", nfe: int = 10, final_step: str | None = None, afs=None,
           sigma_min: float = 0.002, sigma_max: float = 80.0, label_dim: int = 0, latents: int = 256,
           holdout: int = 512, fine: int = 61, teacher_substeps: int = 4, iters: int = 300, seed: int = 0,
           max_order: int | None = None, objective: str = "mean", quantile: float = 0.99,
           tail_weight: float = 1.0, log=None) -> dict:
    """Search the grid of ``solver`` at ``nfe`` calls minimising ``objective`` (``objective_reduction``: mean,
    quantile, mse or mix) of the per-sample endpoint errors; returns the steps-file record (``sigmas``, the
    objective and the scores)."""
    reduce = objective_reduction(objective, quantile, tail_weight)
    lo, hi = sigma_range("edm", sigma_min, sigma_max, denoiser)  # clamped to the network's range
    levels, sampler = sampler_options(solver, nfe, final_step, afs, max_order, denoiser, lo, hi)
    log = log or (lambda text: None)
    started = time.perf_counter()
    tune = teacher(denoiser, *draw_latents(shape, latents, seed, label_dim), lo, hi, fine, teacher_substeps)
    held = teacher(denoiser, *draw_latents(shape, holdout, seed + 1_000_003, label_dim), lo, hi, fine,
                   teacher_substeps)
    log(f"teacher: {latents} + {holdout} latents, {fine} fine levels × {teacher_substeps} Heun substeps "
        f"({time.perf_counter() - started:.1f} s)")
    dp, refined = search_grid(denoiser, tune, levels, sampler, iters, reduce)
    scores = {"searched": summary(run(denoiser, held, refined, sampler), reduce),
              "dp": summary(run(denoiser, held, dp, sampler), reduce)}
    for name in ANALYTIC:
        scores[name] = summary(run(denoiser, held, analytic_grid(name, levels, lo, hi, denoiser), sampler), reduce)
    log(f"search done in {time.perf_counter() - started:.1f} s")
    return {"sigmas": refined, "solver": solver, "nfe": nfe, "final_step": sampler["final_step"], "afs": afs,
            "max_order": max_order, "num_steps": len(refined), "sigma_min": lo, "sigma_max": hi,
            "search": {"method": f"GITS dynamic programming + Nelder-Mead on the {objective} of the endpoint errors",
                       "objective": objective_record(objective, quantile, tail_weight), "fine": fine,
                       "teacher": f"heun, {(fine - 1) * teacher_substeps} steps", "latents": latents,
                       "holdout": holdout, "iters": iters, "seed": seed, "dp_sigmas": dp},
            "holdout_error": scores}
