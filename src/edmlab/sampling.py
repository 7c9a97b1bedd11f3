"""``sample()``: EDM's general sampler (the ``ablation_sampler`` of NVlabs/edm; EDM Algorithms 1 and 2) over
any schedule σ(t), scaling s(t), discretization and solver, plus the time grid it walks."""
import math

import torch

from .discretizations import DEFAULT_SIGMA_RANGE, discretize
from .scalings import NoScaling, VPScaling
from .schedules import LinearSchedule, VESchedule, VPSchedule
from .solvers import SOLVERS, Churn, ProbabilityFlow

SCHEDULES = ("vp", "ve", "linear")
SCALINGS = ("vp", "none")


def _identity(sigma):
    return sigma


def _choose(kind: str, value: str, options) -> str:
    if value not in options:
        raise ValueError(f"unknown {kind} {value!r}: choose one of {sorted(options)}")
    return value


def sigma_range(discretization: str = "edm", sigma_min: float | None = None, sigma_max: float | None = None,
                denoiser=None) -> tuple[float, float]:
    """(σ_min, σ_max): the discretization's EDM default where None, clamped to the denoiser's supported
    range (its ``sigma_min``/``sigma_max`` attributes, if any)."""
    _choose("discretization", discretization, DEFAULT_SIGMA_RANGE)
    default_min, default_max = DEFAULT_SIGMA_RANGE[discretization]
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
    _choose("schedule", schedule, SCHEDULES)
    _choose("scaling", scaling, SCALINGS)
    sched = {"linear": LinearSchedule, "ve": VESchedule}.get(schedule)
    sched = sched() if sched else VPSchedule.fit(sigma_min, sigma_max, epsilon_s)
    return ProbabilityFlow(sched, VPScaling(sched) if scaling == "vp" else NoScaling(sched))


def _validate(num_steps, rho, alpha, S_churn, S_noise):
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"num_steps must be an integer >= 1, got num_steps={num_steps!r}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0 (EDM uses 7), got rho={rho}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1] (1 is Heun), got alpha={alpha}")
    if not S_churn >= 0:
        raise ValueError(f"S_churn must be >= 0, got S_churn={S_churn}")
    if not S_noise >= 0:
        raise ValueError(f"S_noise must be >= 0, got S_noise={S_noise}")


def _plan(num_steps, discretization, schedule, scaling, sigma_min, sigma_max, rho, epsilon_s, C_1, C_2, M,
          denoiser) -> tuple[ProbabilityFlow, torch.Tensor]:
    """The ODE and the N + 1 times t_0 > … > t_{N−1} > t_N = 0 a sampler visits: t_i = σ⁻¹(round_sigma(σ_i)) for
    the discretization's σ_i, then 0 (float64)."""
    lo, hi = sigma_range(discretization, sigma_min, sigma_max, denoiser)
    flow = make_flow(schedule, scaling, lo, hi, epsilon_s)
    sigmas = discretize(discretization, num_steps, lo, hi, rho=rho, epsilon_s=epsilon_s, C_1=C_1, C_2=C_2, M=M)
    round_sigma = getattr(denoiser, "round_sigma", _identity)
    t = flow.schedule.sigma_inv(torch.as_tensor(round_sigma(sigmas), dtype=torch.float64))
    return flow, torch.cat([t, t.new_zeros(1)])


def time_steps(num_steps: int = 18, *, discretization: str = "edm", schedule: str = "linear",
               sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
               epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
               denoiser=None) -> torch.Tensor:
    """The N + 1 times t_0 > … > t_N = 0 that ``sample`` visits with the same arguments (float64)."""
    _validate(num_steps, rho, 1.0, 0.0, 1.0)
    return _plan(num_steps, discretization, schedule, "none", sigma_min, sigma_max, rho, epsilon_s, C_1, C_2, M,
                 denoiser)[1]


def sigma_steps(num_steps: int = 18, *, discretization: str = "edm", schedule: str = "linear",
                sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
                epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
                denoiser=None) -> torch.Tensor:
    """σ(t_i) of ``time_steps`` (same arguments): e.g. the 18-step EDM grid 80, 57.59, …, 0.002, 0."""
    _validate(num_steps, rho, 1.0, 0.0, 1.0)
    flow, t = _plan(num_steps, discretization, schedule, "none", sigma_min, sigma_max, rho, epsilon_s, C_1, C_2, M,
                    denoiser)
    return flow.schedule.sigma(t)


def sample(denoiser, latents: torch.Tensor, *, solver: str = "heun", discretization: str = "edm",
           schedule: str = "linear", scaling: str = "none", num_steps: int = 18, sigma_min: float | None = None,
           sigma_max: float | None = None, rho: float = 7.0, alpha: float = 1.0, S_churn: float = 0.0,
           S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0, epsilon_s: float = 1e-3,
           C_1: float = 0.001, C_2: float = 0.008, M: int = 1000, generator=None, callback=None,
           class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Draw samples by solving EDM's probability-flow ODE (or its churned SDE) from σ_max to 0.

    ``denoiser(x, sigma)`` returns D(x; σ) for ``sigma`` of shape [N]; its optional ``sigma_min``,
    ``sigma_max`` and ``round_sigma`` are honoured. ``latents`` are unscaled N(0, I) draws; the sampler starts at
    x_0 = latents·σ(t_0)·s(t_0) and runs in float64 whatever the network's precision. ``generator`` feeds the churn
    noise: a ``torch.Generator``, or ``edmlab.SeedStreams`` for per-sample streams. ``callback`` receives a dict
    (i, t, sigma, x, denoised, …) after every step. Returns the samples in the latents' dtype.
    """
    if not isinstance(latents, torch.Tensor) or latents.dtype not in (torch.float32, torch.float64):
        got = latents.dtype if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise TypeError(f"latents must be a float32 or float64 tensor, got {got}")
    solve = SOLVERS.get(_choose("solver", solver, SOLVERS))
    _validate(num_steps, rho, alpha, S_churn, S_noise)
    flow, t_steps = _plan(num_steps, discretization, schedule, scaling, sigma_min, sigma_max, rho, epsilon_s, C_1, C_2,
                          M, denoiser)
    start = flow.at(float(t_steps[0]))
    x = latents.to(torch.float64) * (start.sigma * start.s)
    with torch.no_grad():
        x = solve(denoiser, x, t_steps, flow, alpha=alpha, churn=Churn(S_churn, S_min, S_max, S_noise),
                  round_sigma=getattr(denoiser, "round_sigma", _identity), generator=generator, callback=callback,
                  denoiser_kwargs={} if class_labels is None else {"class_labels": class_labels})
    return x.to(latents.dtype)
