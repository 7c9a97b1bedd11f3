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
"""
import torch

FINAL_STEPS = ("euler", "denoise", "none")
AFS = {False: None, None: None, True: "zero", "zero": "zero", "gaussian": "gaussian", "none": None}


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
