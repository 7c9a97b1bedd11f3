"""What ``edmlab.sample`` will do before it runs (``plan``): the checked options, the ODE, the time grid and the exact
number of denoiser calls; ``nfe`` and ``steps_for_nfe`` convert between noise levels and calls."""
import inspect
import math
from dataclasses import dataclass, field

import torch

from edmlab.design.discretizations import DISCRETIZATIONS, custom_sigmas, default_sigma_range, discretize
from edmlab.design.registry import choose
from edmlab.design.scalings import SCALINGS
from edmlab.design.schedules import SCHEDULES
from edmlab.sampling.solvers import OPTIONS, SOLVERS, Churn, ProbabilityFlow, Solver, sigma_grid
from edmlab.sampling.solvers.calls import check_afs, check_final_step, identity

# Arguments of ``edmlab.sample`` that do not change what it plans (a guided call is one call of the guided denoiser).
SAMPLING_ONLY = ("generator", "callback", "class_labels", "guide", "guidance", "guidance_interval",
                 "guidance_interval_by")


def solver_calls(solver: str, num_steps: int, final_step: str = "euler", afs=None) -> int:
    """Denoiser calls of a fixed-grid solver over N noise levels: c·(N − 1) steps between them (c, the record's
    calls_per_step: 2 for Heun), + 1 for a final step that calls D ("euler", "denoise"), − 1 with an analytic first
    step."""
    return (choose("solver", solver, SOLVERS).calls_per_step * (num_steps - 1)
            + (check_final_step(final_step) != "none") - (check_afs(afs) is not None))


def min_levels(solver: str, final_step: str, afs, order: int = 0) -> int:
    """The fewest noise levels N a configuration can use: one step per order a multistep solver must reach, and
    at least one step when it stops at σ_min or replaces its first call."""
    return 1 + max(order, int(final_step == "none" or check_afs(afs) is not None))


def _fit(solver: str, nfe: int, rules, afs, order: int):
    per_step = SOLVERS[solver].calls_per_step
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
    record = SOLVERS[solver]
    rules = [record.check_final_step(final_step)] if final_step is not None else record.default_final_steps()
    found = _fit(solver, nfe, rules, afs, order)
    if found:
        return found
    per_step = SOLVERS[solver].calls_per_step
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
    result = plan(solver=solver, num_steps=num_steps,
                  **{k: v for k, v in sampler_kwargs.items() if k not in SAMPLING_ONLY})
    if result.nfe is None:
        raise ValueError("solver='adaptive' has no NFE before it runs: count its calls with edmlab.CountingDenoiser")
    return result.nfe


EDM_NUM_STEPS = 18


def sigma_range(discretization: str = "edm", sigma_min: float | None = None, sigma_max: float | None = None,
                denoiser=None, epsilon_s: float = 1e-3) -> tuple[float, float]:
    """(σ_min, σ_max): the discretization's EDM default where None (vp: σ_vp(ε_s), σ_vp(1)), clamped to the
    denoiser's supported range (its ``sigma_min``/``sigma_max`` attributes, if any)."""
    choose("discretization", discretization, dict.fromkeys(DISCRETIZATIONS))
    default_min, default_max = default_sigma_range(discretization, epsilon_s)
    lo = default_min if sigma_min is None else float(sigma_min)
    hi = default_max if sigma_max is None else float(sigma_max)
    lo = max(lo, float(getattr(denoiser, "sigma_min", 0.0)))
    hi = min(hi, float(getattr(denoiser, "sigma_max", math.inf)))
    if not 0 < lo < hi < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={lo}, sigma_max={hi}"
                         + (" (after clamping to the denoiser's range)" if denoiser is not None else ""))
    return lo, hi


def make_flow(schedule: str = "linear", scaling: str = "none", sigma_min: float = 0.002, sigma_max: float = 80.0,
              epsilon_s: float = 1e-3) -> ProbabilityFlow:
    """The probability-flow ODE for named σ(t) and s(t); the VP schedule is refit to [σ_min, σ_max] as in EDM."""
    sched = choose("schedule", schedule, SCHEDULES).for_range(sigma_min, sigma_max, epsilon_s)
    return ProbabilityFlow(sched, choose("scaling", scaling, SCALINGS)(sched))


def _validate(num_steps, rho, S_churn, S_noise):
    if num_steps is not None and not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"num_steps must be an integer >= 1, got num_steps={num_steps!r}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0 (EDM uses 7), got rho={rho}")
    if not S_churn >= 0:
        raise ValueError(f"S_churn must be >= 0, got S_churn={S_churn}")
    if not S_noise >= 0:
        raise ValueError(f"S_noise must be >= 0, got S_noise={S_noise}")


def _plan(num_steps, discretization, schedule, scaling, sigma_min, sigma_max, grid: dict, denoiser,
          steps=None) -> tuple[ProbabilityFlow, torch.Tensor, tuple[float, float]]:
    """The ODE, the N + 1 times t_0 > … > t_{N−1} > t_N = 0 a sampler visits: t_i = σ⁻¹(round_sigma(σ_i)) for
    the discretization's σ_i (``steps`` for custom; ``grid``: rho, epsilon_s, C_1, C_2, M, shift), then 0
    (float64), and the σ range (σ_min, σ_max) used."""
    if discretization == "custom":
        sigmas, lo, hi = _custom_plan(steps, num_steps, sigma_min, sigma_max, denoiser)
    else:
        if steps is not None:
            raise ValueError(f"steps is only read by discretization=custom, not discretization={discretization}")
        num_steps = EDM_NUM_STEPS if num_steps is None else num_steps
        lo, hi = sigma_range(discretization, sigma_min, sigma_max, denoiser, grid["epsilon_s"])
        sigmas = discretize(discretization, num_steps, lo, hi, **grid)
    flow = make_flow(schedule, scaling, lo, hi, grid["epsilon_s"])
    round_sigma = getattr(denoiser, "round_sigma", identity)
    t = flow.schedule.sigma_inv(torch.as_tensor(round_sigma(sigmas), dtype=torch.float64))
    return flow, torch.cat([t, t.new_zeros(1)]), (lo, hi)


def _custom_plan(steps, num_steps, sigma_min, sigma_max, denoiser):
    """The explicit grid of discretization=custom, checked against the network's σ range, and its (σ_min, σ_max)."""
    if sigma_min is not None or sigma_max is not None:
        raise ValueError(f"discretization=custom takes its range from the grid; drop sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}")
    sigmas = custom_sigmas(steps, float(getattr(denoiser, "sigma_min", 0.0)),
                           float(getattr(denoiser, "sigma_max", math.inf)))
    if num_steps is not None and num_steps != len(sigmas):
        raise ValueError(f"discretization=custom: the grid has {len(sigmas)} noise levels but num_steps={num_steps}; "
                         f"set num_steps=null (or {len(sigmas)})")
    return sigmas, float(sigmas[-1]), float(sigmas[0])


def time_steps(num_steps: int | None = EDM_NUM_STEPS, **grid) -> torch.Tensor:
    """The N + 1 times t_0 > … > t_N = 0 that ``sample`` visits with the same grid arguments (those of ``plan``:
    discretization, schedule, sigma_min, sigma_max, rho, …, denoiser, steps), float64."""
    return plan(solver="euler", num_steps=num_steps, **grid).t_steps


def sigma_steps(num_steps: int | None = EDM_NUM_STEPS, **grid) -> torch.Tensor:
    """σ(t_i) of ``time_steps`` (same arguments): e.g. the 18-step EDM grid 80, 57.59, …, 0.002, 0."""
    return plan(solver="euler", num_steps=num_steps, **grid).sigmas


@dataclass(frozen=True)
class Plan:
    """What ``sample`` will do: the solver's record, its ODE and grid (N levels, then t = 0; ``sigmas`` for a
    σ-time solver), how it ends, its options, and its exact NFE (None for a solver that picks its own steps, whose
    calls are counted as it runs)."""

    solver: Solver
    flow: ProbabilityFlow
    t_steps: torch.Tensor
    final_step: str
    nfe: int | None
    options: dict = field(default_factory=dict)
    sigma_range: tuple = (None, None)   # (σ_min, σ_max) of the discretization, before round_sigma

    @property
    def sigmas(self) -> torch.Tensor:
        """σ(t_i) of the grid: σ_0 > … > σ_{N−1} > σ_N = 0."""
        return self.flow.schedule.sigma(self.t_steps)

    @property
    def num_steps(self) -> int:
        return len(self.t_steps) - 1

    @property
    def grid(self) -> tuple:
        """The solver's grid arguments: (t_steps, flow) for one over any σ(t), s(t), else (σ_0, …, σ_N = 0)."""
        return (self.t_steps, self.flow) if self.solver.any_flow else (sigma_grid(self.flow, self.t_steps,
                                                                                  self.solver.name),)


def plan(*, solver: str = "heun", discretization: str = "edm", schedule: str = "linear", scaling: str = "none",
         num_steps: int | None = None, nfe: int | None = None, sigma_min: float | None = None,
         sigma_max: float | None = None, rho: float = 7.0, S_churn: float = 0.0, S_min: float = 0.0,
         S_max: float = float("inf"), S_noise: float = 1.0, final_step: str | None = None, afs=None,
         epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000, shift: float = 1.0,
         steps=None, denoiser=None, **solver_options) -> Plan:
    """Check every sampler argument (a one-line ValueError naming a bad one) and resolve the grid: ``num_steps``
    noise levels (None: 18, EDM), or the levels and final step that spend exactly ``nfe`` denoiser calls.
    ``solver_options``: the options of ``edmlab.sampling.solvers.OPTIONS`` (alpha, max_order, rtol, atol, eta,
    noise_scale, solver_type), each taken by the solvers whose record lists it."""
    record = choose("solver", solver, SOLVERS)
    _validate(num_steps, rho, S_churn, S_noise)
    if num_steps is not None and nfe is not None:
        raise ValueError(f"give num_steps or nfe, not both (got num_steps={num_steps}, nfe={nfe})")
    if final_step is not None:
        record.check_final_step(final_step)
    check_afs(afs)
    options = _solver_options(record, {**solver_options, "churn": Churn(S_churn, S_min, S_max, S_noise)})
    order = options.get("max_order") or record.order
    if not record.fixed_grid:
        fixed = {"num_steps": num_steps, "nfe": nfe, "discretization": "custom" if discretization == "custom" else None}
        fixed = ", ".join(f"{k}={v}" for k, v in fixed.items() if v is not None)
        if fixed:
            raise ValueError(f"solver={solver!r} picks its own steps between sigma_max and sigma_min (the "
                             f"discretization's range) from {'/'.join(record.options)}: drop {fixed}")
        num_steps = 2
    elif nfe is not None:
        levels = len(custom_sigmas(steps)) if discretization == "custom" else None
        num_steps, final_step = steps_for_nfe(solver, nfe, final_step, afs, order)
        if levels is not None and levels != num_steps:
            raise ValueError(f"nfe={nfe} with solver={solver!r} needs {num_steps} noise levels, but the custom grid "
                             f"has {levels}: set nfe=null (the grid decides) or use a grid of {num_steps} levels")
        num_steps = None if levels is not None else num_steps
    grid = dict(rho=rho, epsilon_s=epsilon_s, C_1=C_1, C_2=C_2, M=M, shift=shift)
    flow, t_steps, sigma_range_used = _plan(num_steps, discretization, schedule, scaling, sigma_min, sigma_max, grid,
                                            denoiser, steps=steps)
    final_step = final_step or record.default_final_steps()[0]
    levels = len(t_steps) - 1
    if not record.any_flow:
        sigma_grid(flow, t_steps, solver)
    if record.fixed_grid and levels < 1 + int(final_step == "none" or check_afs(afs) is not None):
        raise ValueError(f"num_steps={levels} is too few for final_step={final_step!r}, afs={afs!r}: they need at "
                         f"least one step between noise levels (num_steps >= 2)")
    calls = solver_calls(solver, levels, final_step, afs) if record.fixed_grid else None
    return Plan(record, flow, t_steps, final_step, calls, options | {"final_step": final_step, "afs": afs},
                sigma_range_used)


def sampler_keys() -> set[str]:
    """Every keyword a sampler config (``conf/sampler``, ``sampler.*``) may set: ``plan``'s and the solver options."""
    named = set(inspect.signature(plan).parameters) - {"denoiser", "solver_options"}
    return named | {name for name in OPTIONS if name != "churn"}


def _solver_options(record: Solver, given: dict) -> dict:
    """The options the solver's record lists, checked (None: its own default); any other must be off."""
    options = {}
    for name, value in given.items():
        if name not in OPTIONS:
            raise ValueError(f"unknown sampler option {name}={value!r}: the solver options are "
                             f"{', '.join(sorted(OPTIONS))}")
        off, check = OPTIONS[name]
        if name in record.options:
            if value is not None:
                options[name] = check(value, record)
        elif value != off:
            users = sorted(s.name for s in SOLVERS.values() if name in s.options)
            shown = "S_churn={}".format(value.S_churn) if name == "churn" else f"{name}={value}"
            raise ValueError(f"{shown} does not apply to solver={record.name!r}; it is an option of {', '.join(users)}")
    return options
