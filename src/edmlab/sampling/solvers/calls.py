"""What every solver shares: its denoiser calls (with the analytic first step) and how it ends (``final_step``).

Analytic first step (AFS; Zhou et al. 2024, "Fast ODE-based sampling for diffusion models in around 5 steps",
Sec. 3.3): the first call, at σ_max, is replaced by a large-σ limit of D, saving one network evaluation:
  - ``afs="zero"`` (AMED's AFS): ε ≈ x/σ, i.e. D(x; σ) ≈ 0;
  - ``afs="gaussian"``: D of Gaussian data N(0, σ_data² I), D(x; σ) ≈ σ_data²/(σ² + σ_data²)·x (needs the
    denoiser's ``sigma_data``).
``afs=True`` means "zero". Final steps, from the last noise level σ_{N−1} = σ_min of the grid:
  - ``"euler"``: EDM's last step, an Euler step to σ = 0 (one call; Algorithm 1 line 8 without correction);
  - ``"denoise"``: return D(x; σ_min) (one call; in σ-time the Euler step to 0 is this same value);
  - ``"none"``: stop at σ_min and return x (no call; the published few-step NFE counts).

A solver is one function plus one ``Solver`` record of its facts (next to the function); ``plan`` and ``sample``
read the record, never the function's signature.
"""
from dataclasses import dataclass
from typing import Callable

import torch

FINAL_STEPS = ("euler", "denoise", "none")
AFS = {False: None, None: None, True: "zero", "zero": "zero", "gaussian": "gaussian", "none": None}


def identity(value):
    return value


@dataclass(frozen=True)
class Solver:
    """One row of the solver table (``solver=<name>``): its function and the facts ``plan`` and ``sample`` read.

    ``solve(denoiser, x, sigmas, *, final_step, afs, callback, denoiser_kwargs, **options)`` integrates EDM's ODE
    dx/dσ = (x − D(x; σ))/σ over σ_0 > … > σ_{N−1} > σ_N = 0 (floats); with ``any_flow`` it is
    ``solve(denoiser, x, t_steps, flow, ...)`` over the times of any σ(t), s(t) (EDM Eq. 4)."""

    name: str
    solve: Callable
    calls_per_step: int = 1        # denoiser calls per step between two noise levels
    order: int = 0                 # a multistep solver's order once it has history (plan needs that many steps);
    max_order: int | None = None   # the highest order ``max_order`` may set (None: not settable);   0: one-step
    any_flow: bool = False         # over any σ(t), s(t); else σ-time only (schedule=linear, scaling=none)
    fixed_grid: bool = True        # False: picks its own steps from a tolerance, its NFE counted as it runs
    options: tuple = ()            # the names in ``OPTIONS`` it takes
    needs: tuple = ()              # sampler facts passed to it: "round_sigma", "generator"
    final_steps: tuple = FINAL_STEPS  # the final steps it takes; with final_step=null the first of euler, none

    def default_final_steps(self) -> list:
        """The final steps ``nfe`` may pick from, in order, when none is given: "euler", then "none"."""
        return [end for end in ("euler", "none") if end in self.final_steps]

    def check_final_step(self, final_step) -> str:
        check_final_step(final_step)
        if final_step not in self.final_steps:
            raise ValueError(f"solver={self.name!r} takes final_step {' or '.join(self.final_steps)}, got "
                             f"final_step={final_step!r} (leave it null)")
        return final_step

    def check_order(self, max_order) -> int:
        highest = self.max_order
        if not (isinstance(max_order, int) and not isinstance(max_order, bool) and 1 <= max_order <= highest):
            raise ValueError(f"solver={self.name!r} has orders 1…{highest}, got max_order={max_order!r}")
        return max_order


def final_step_in_sigma(model: "DenoiserCalls", x: torch.Tensor, sigma: float, final_step: str, first: bool = False):
    """The end of a σ-time solver at σ_{N−1} = σ_min: x itself ("none"), D(x; σ_min) ("denoise"), or the Euler step
    to σ = 0, x + (0 − σ)·(x − D)/σ ("euler"), and the D it used (None for "none")."""
    if final_step == "none":
        return x, None
    denoised = model(x, sigma, first)
    return (x + (0.0 - sigma) * ((x - denoised) / sigma) if final_step == "euler" else denoised), denoised


def finish_in_sigma(model: "DenoiserCalls", x: torch.Tensor, sigmas, taken: int, final_step: str, callback=None):
    """A σ-time solver's end after ``taken`` steps: ``final_step_in_sigma`` from σ_taken (= σ_min), reported to
    ``callback`` as one more step to σ = 0."""
    if final_step == "none":
        return x
    sigma = sigmas[taken]
    x, denoised = final_step_in_sigma(model, x, sigma, final_step, first=not taken)
    if callback is not None:
        callback(dict(i=taken, sigma=sigma, sigma_next=0.0, x=x, denoised=denoised))
    return x


def check_final_step(final_step) -> str:
    if final_step not in FINAL_STEPS:
        raise ValueError(f"unknown final_step {final_step!r}: choose one of {list(FINAL_STEPS)}")
    return final_step


def check_afs(afs):
    if not isinstance(afs, (str, bool, type(None))) or afs not in AFS:
        raise ValueError(f"unknown afs {afs!r}: choose one of null, 'zero' (D ≈ 0, AMED) or 'gaussian' "
                         f"(D ≈ σ_data²/(σ²+σ_data²)·x)")
    return AFS[afs]


class DenoiserCalls:
    """D(x; σ) as the solvers call it: a float σ broadcast over the batch, the output in x's dtype, the
    class labels bound, and the first call replaced by its analytic limit when ``afs`` is set."""

    def __init__(self, denoiser, denoiser_kwargs: dict | None, afs=None):
        self.denoiser, self.kwargs, self.afs = denoiser, denoiser_kwargs or {}, check_afs(afs)
        self.sigma_data = getattr(denoiser, "sigma_data", None)
        if self.afs == "gaussian" and self.sigma_data is None:
            raise ValueError(f"afs='gaussian' needs the denoiser's sigma_data, and {type(denoiser).__name__} has "
                             f"none: use afs='zero' or a preconditioned network (EDMPrecond)")

    def __call__(self, x: torch.Tensor, sigma: float, first: bool = False) -> torch.Tensor:
        if first and self.afs == "zero":
            return torch.zeros_like(x)
        if first and self.afs == "gaussian":
            return self.sigma_data**2 / (sigma**2 + self.sigma_data**2) * x
        return self.denoiser(x, x.new_full((x.shape[0],), sigma), **self.kwargs).to(x.dtype)


class CountingDenoiser:
    """A denoiser that counts its calls (``calls``) and the samples it evaluated (``evaluations``); NFE per sample
    = evaluations / samples drawn. Its σ range, round_sigma and sigma_data are the wrapped denoiser's."""

    def __init__(self, denoiser):
        self.denoiser, self.calls, self.evaluations = denoiser, 0, 0

    def __getattr__(self, name):
        return getattr(self.__dict__["denoiser"], name)

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        self.evaluations += x.shape[0]
        return self.denoiser(x, sigma, **kwargs)
