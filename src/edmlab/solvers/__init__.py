"""Solvers of EDM's probability-flow ODE, one plain function each in ``SOLVERS`` (``solver=`` option):

- ``euler``, ``heun``: EDM's Algorithms 1–2 over any σ(t), s(t), with churn (``edm.py``);
- ``ipndm``, ``ipndm_v``, ``deis``, ``dpmpp_2m``, ``dpmpp_3m``, ``unipc``: multistep, one call per step
  (``multistep.py``);
- ``adaptive``: embedded Bogacki–Shampine 3(2) with ``rtol``/``atol`` (``adaptive.py``).

Every solver takes ``final_step`` and ``afs`` (``calls.py``). ``solver_calls`` is the exact number of denoiser
calls of a fixed-grid solver, ``steps_for_nfe`` its inverse, and ``nfe`` (re-exported as ``edmlab.nfe``) the calls
of a whole ``edmlab.sample`` configuration.
"""
import inspect

from .adaptive import sample_adaptive
from .calls import AFS, FINAL_STEPS, CountingDenoiser, DenoiserCalls, check_afs, check_final_step
from .edm import Denoiser, sample_euler, sample_heun
from .flow import Churn, FlowPoint, ProbabilityFlow, sigma_grid
from .multistep import (sample_deis, sample_dpmpp_2m, sample_dpmpp_3m, sample_ipndm, sample_ipndm_v,
                        sample_unipc)

SOLVERS = {
    "euler": sample_euler, "heun": sample_heun, "ipndm": sample_ipndm, "ipndm_v": sample_ipndm_v,
    "deis": sample_deis, "dpmpp_2m": sample_dpmpp_2m, "dpmpp_3m": sample_dpmpp_3m, "unipc": sample_unipc,
    "adaptive": sample_adaptive,
}
# Solvers over any σ(t), s(t); every other one integrates dx/dσ or dx/dλ itself (``sigma_grid``).
ANY_FLOW = ("euler", "heun")
# The order a multistep solver reaches once it has enough history (max_order where it has one).
ORDER = {"dpmpp_2m": 2, "dpmpp_3m": 3}
CALLS_PER_STEP = {"heun": 2}


def solver_calls(solver: str, num_steps: int, final_step: str = "euler", afs=None) -> int:
    """Denoiser calls of a fixed-grid solver over N noise levels: c·(N − 1) steps between them (c = 2 for Heun,
    1 otherwise), + 1 for a final step that calls D ("euler", "denoise"), − 1 with an analytic first step."""
    return (CALLS_PER_STEP.get(solver, 1) * (num_steps - 1) + (check_final_step(final_step) != "none")
            - (check_afs(afs) is not None))


def min_levels(solver: str, final_step: str, afs, order: int = 0) -> int:
    """The fewest noise levels N a configuration can use: one step per order a multistep solver must reach, and
    at least one step when it stops at σ_min or replaces its first call."""
    return 1 + max(order, int(final_step == "none" or check_afs(afs) is not None))


def _fit(solver: str, nfe: int, rules, afs, order: int):
    per_step = CALLS_PER_STEP.get(solver, 1)
    for rule in rules:
        steps, remainder = divmod(nfe - (rule != "none") + (check_afs(afs) is not None), per_step)
        if remainder == 0 and steps + 1 >= min_levels(solver, rule, afs, order):
            return steps + 1, rule
    return None


def steps_for_nfe(solver: str, nfe: int, final_step: str | None, afs, order: int = 0) -> tuple[int, str]:
    """(N, final_step) spending exactly ``nfe`` calls: final_step as given, or the first of "euler", "none" that
    fits. A ValueError says why none fits and which nfe would."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got nfe={nfe!r}")
    rules = [check_final_step(final_step)] if final_step is not None else ["euler", "none"]
    found = _fit(solver, nfe, rules, afs, order)
    if found:
        return found
    per_step = CALLS_PER_STEP.get(solver, 1)
    fits = [n for n in range(1, nfe + 2 * per_step + order + 4) if _fit(solver, n, rules, afs, order)]
    if fits and nfe < fits[0]:
        why = f"it needs at least nfe={fits[0]}" + (f" to take the {order} steps of order {order}" if order else "")
    else:
        why = f"it makes {per_step} calls per step" + (f", plus one for final_step={rules[0]!r}"
                                                       if len(rules) == 1 and rules[0] != "none" else "")
    nearest = min(fits, key=lambda n: (abs(n - nfe), n)) if fits else None
    raise ValueError(f"solver={solver!r} cannot spend exactly nfe={nfe} calls (final_step={final_step!r}, "
                     f"afs={afs!r}): {why}; nearest possible nfe={nearest}")


def nfe(solver: str = "heun", num_steps: int | None = None, **sampler_kwargs) -> int:
    """Denoiser calls of ``edmlab.sample(denoiser, latents, solver=solver, num_steps=num_steps, **sampler_kwargs)``
    (the same keyword arguments; ``denoiser=`` for its σ range and round_sigma), e.g. 35 for EDM's 18-step Heun.
    Arguments of ``sample`` that do not change the solver's calls (generator, callback, class_labels, guidance: a
    guided call is one call of the guided denoiser) are accepted and ignored. The adaptive solver's NFE follows from
    its tolerance: count it (``edmlab.CountingDenoiser``)."""
    from ..sampling import plan, sample

    known = inspect.signature(plan).parameters
    ignored = set(inspect.signature(sample).parameters) - set(known)
    result = plan(solver=solver, num_steps=num_steps, **{k: v for k, v in sampler_kwargs.items() if k not in ignored})
    if result.nfe is None:
        raise ValueError("solver='adaptive' has no NFE before it runs: count its calls with edmlab.CountingDenoiser")
    return result.nfe


__all__ = ["SOLVERS", "ANY_FLOW", "ORDER", "CALLS_PER_STEP", "AFS", "FINAL_STEPS", "Churn", "FlowPoint",
           "ProbabilityFlow", "DenoiserCalls", "CountingDenoiser", "Denoiser", "sigma_grid", "solver_calls",
           "steps_for_nfe", "min_levels",
           "nfe", "sample_euler", "sample_heun", "sample_ipndm", "sample_ipndm_v", "sample_deis", "sample_dpmpp_2m",
           "sample_dpmpp_3m", "sample_unipc", "sample_adaptive"]
