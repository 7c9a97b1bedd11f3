"""Guidance as a denoiser wrapper, so that every solver gets it (EDM2 ``generate_images.py``; Karras et al. 2024,
"Guiding a Diffusion Model with a Bad Version of Itself", Eq. 1):

    D_w(x; σ) = D_guide(x; σ) + w·(D(x; σ) − D_guide(x; σ))   inside the guidance interval,   D(x; σ) elsewhere,

w = 1 is D itself. Classifier-free guidance (Ho & Salimans 2022): D_guide is the unconditional model (label
dropout, or a separate unconditional run). Autoguidance: D_guide is a smaller or shorter-trained network of the
same task and conditioning. Each call inside the interval evaluates both networks: ``calls`` counts them separately.

The interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and Distribution
Quality in Diffusion Models") limits guidance to mid noise levels, decided one of two ways (``by``):

- ``"sigma"``: [σ_lo, σ_hi], closed; each call is guided iff σ_lo ≤ σ ≤ σ_hi for its own σ (the σ̂ of a churned
  step, the corrector's σ_{i+1}).
- ``"step"``: [first, last], the rule of the paper's released sampler (kynkaat/guidance-interval,
  ``sampling/edm_sampler.py``, ``edm_sampler``): the N steps of an N-level grid are numbered i = 0 … N − 1
  (step i goes from σ_i to σ_{i+1}, the last one to σ_N = 0), and step i is guided iff first ≤ i ≤ last, both
  bounds included; *every* call of a guided step is guided (Heun's D(x̂_i; σ̂_i) and its corrector
  D(x'; σ_{i+1}), even where σ_{i+1} lies outside the σ range of the guided steps' starts), churn does not change
  i, and the last step (Euler, one call) is step N − 1. EDM2-XXL's settings there (``generate_zip.py``): [17, 22]
  of 32 steps for FID, [13, 19] for FD_DINOv2. No σ interval gives this: the corrector of step i and the first
  call of step i + 1 share σ_{i+1}, and only one of them is guided at the ends of a step range. The sampler tells
  the wrapper the step through its callback (``GuidedDenoiser.following_steps``, used by ``edmlab.sample``); the
  adaptive solver has no step grid.
"""
import contextlib
import math

import torch

from edmlab.infra.checks import is_int

INTERVAL_BY = ("sigma", "step")


def check_guidance(guidance: float, interval=None, by: str = "sigma") -> tuple[float, float]:
    """The interval after checking w ≥ 0 and, by σ, 0 ≤ σ_lo < σ_hi, by step, integers 0 ≤ first ≤ last
    (None: everywhere, (0, inf))."""
    if not (isinstance(guidance, (int, float)) and guidance >= 0):
        raise ValueError(f"guidance={guidance!r} must be a number >= 0 (1: no guidance, >1 pushes away from the "
                         f"guide; EDM2 uses 1.2-2.5)")
    if by not in INTERVAL_BY:
        raise ValueError(f"guidance_interval_by={by!r}: choose sigma ([sigma_lo, sigma_hi]) or step ([first, last] "
                         f"step indices, as Kynkäänniemi et al.'s released edm_sampler)")
    if interval is None:
        return 0.0, math.inf
    if not hasattr(interval, "__len__") or len(interval) != 2:
        raise ValueError(f"guidance_interval={interval!r} must be two numbers, [low, high]")
    if by == "step":
        first, last = interval
        if not (is_int(first) and is_int(last) and 0 <= first <= last):
            raise ValueError(f"guidance_interval=[{first}, {last}] (guidance_interval_by=step) must be two step "
                             f"indices 0 <= first <= last (0-based, both guided)")
        return first, last
    lo, hi = float(interval[0]), float(interval[1])
    if not 0 <= lo < hi:
        raise ValueError(f"guidance_interval=({lo}, {hi}) must satisfy 0 <= sigma_lo < sigma_hi")
    return lo, hi


def _shape(denoiser) -> tuple | None:
    spec = getattr(denoiser, "model_spec", None)
    if isinstance(spec, dict) and spec.get("shape"):
        return tuple(spec["shape"])
    model = getattr(denoiser, "model", None)
    channels = getattr(model, "img_channels", getattr(model, "in_channels", None))
    resolution = getattr(model, "img_resolution", None)
    return (channels, resolution, resolution) if None not in (channels, resolution) else None


def check_guide(denoiser, guide) -> None:
    """A guide must denoise the same data: same shape (channels, resolution) and, if conditional, the same labels."""
    a, b = _shape(denoiser), _shape(guide)
    if a is not None and b is not None and a != b:
        raise ValueError(f"the guide network denoises shape {list(b)} (channels, resolution), the network "
                         f"{list(a)}: the guide must be trained on the same data")
    la, lb = int(getattr(denoiser, "label_dim", 0) or 0), int(getattr(guide, "label_dim", 0) or 0)
    if lb and lb != la:
        raise ValueError(f"the guide takes {lb} class labels, the network {la}: use a guide of the same conditioning "
                         f"(autoguidance) or an unconditional one (classifier-free guidance)")


class GuidedDenoiser:
    """D_w of ``denoiser`` guided by ``guide`` with weight ``guidance`` inside ``interval``, [σ_lo, σ_hi] for
    ``by="sigma"`` or [first, last] step indices for ``by="step"`` (see the module docstring). Other attributes
    (σ range, round_sigma, label_dim, …) are the guided denoiser's. A guide without labels (label_dim 0) is called
    without them: classifier-free guidance."""

    def __init__(self, denoiser, guide, guidance: float, interval=None, by: str = "sigma"):
        self.interval = check_guidance(guidance, interval, by)
        check_guide(denoiser, guide)
        self.denoiser, self.guide, self.guidance, self.by = denoiser, guide, float(guidance), by
        self.calls = {"denoiser": 0, "guide": 0}
        self.step = None

    def __getattr__(self, name):
        return getattr(self.__dict__["denoiser"], name)

    @contextlib.contextmanager
    def following_steps(self, num_steps: int, solver: str, callback=None):
        """While a solver walks a ``num_steps``-level grid (by step): ``step`` = 0, then i + 1 once the solver's
        callback reports step i done (each fixed-grid solver reports every step, the last one included, after all
        of its calls), so every call is attributed to its own step. Yields the callback for the solver, ``callback``
        chained. Refuses a step range beyond step N − 1 and the adaptive solver."""
        if self.by != "step" or self.interval == (0.0, math.inf):
            yield callback
            return
        if solver == "adaptive":
            raise ValueError("guidance_interval_by=step numbers the steps of a fixed grid, and solver='adaptive' "
                             "picks its own: use guidance_interval_by=sigma")
        if self.interval[1] > num_steps - 1:
            raise ValueError(f"guidance_interval={list(self.interval)} (guidance_interval_by=step) goes beyond the "
                             f"last step, {num_steps - 1}, of num_steps={num_steps} (steps 0-{num_steps - 1})")

        def advance(info):
            self.step = int(info["i"]) + 1
            if callback is not None:
                callback(info)

        self.step = 0
        try:
            yield advance
        finally:
            self.step = None

    def _inside(self, x, sigma):
        """Which samples are guided: a bool over the batch by σ, or one bool for the whole call by step."""
        if self.by == "step":
            if self.step is None:
                raise ValueError("guidance_interval_by=step needs the sampler's step index: sample with "
                                 "edmlab.sample, which reports it (GuidedDenoiser.following_steps)")
            return self.interval[0] <= self.step <= self.interval[1]
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        return (s >= self.interval[0]) & (s <= self.interval[1])

    def __call__(self, x, sigma, class_labels=None, **kwargs):
        labels = {} if class_labels is None else {"class_labels": class_labels}
        denoised = self.denoiser(x, sigma, **labels, **kwargs)
        self.calls["denoiser"] += 1
        everywhere = self.interval == (0.0, math.inf)
        if not everywhere:  # a σ interval needs σ on the host (one sync per call)
            inside = self._inside(x, sigma)
            if not (inside if isinstance(inside, bool) else bool(inside.any())):
                return denoised
            everywhere = inside is True
        guide_labels = labels if int(getattr(self.guide, "label_dim", 0) or 0) else {}
        reference = self.guide(x, sigma, **guide_labels, **kwargs)
        self.calls["guide"] += 1
        if reference.shape != denoised.shape:
            raise ValueError(f"the guide returned shape {list(reference.shape)} for inputs of shape {list(x.shape)}: "
                             f"the guide must be trained on the same data")
        guided = torch.lerp(reference.to(denoised.dtype), denoised, self.guidance)
        return guided if everywhere else torch.where(inside.reshape(-1, *[1] * (x.ndim - 1)), guided, denoised)


class Unconditional:
    """``denoiser`` called without class labels and reporting label_dim 0 (an edmlab Precond then feeds zeros,
    the class-dropped input of a network trained with ``network.label_dropout``): the guide of classifier-free
    guidance from the same network."""

    def __init__(self, denoiser):
        if not int(getattr(denoiser, "label_dim", 0) or 0):
            raise ValueError("guide=uncond is classifier-free guidance, which needs a conditional model (data.cond=true, "
                             "trained with network.label_dropout>0); this one is unconditional: guide it with "
                             "another network (autoguidance) instead")
        self.denoiser, self.label_dim = denoiser, 0

    def __getattr__(self, name):
        return getattr(self.__dict__["denoiser"], name)

    def __call__(self, x, sigma, class_labels=None, **kwargs):
        return self.denoiser(x, sigma, **kwargs)


def guided_nfe(guided: GuidedDenoiser, nfe: int) -> dict:
    """Network evaluations per sample when the sampler made ``nfe`` calls per sample: the guide's are
    nfe·(guide calls / denoiser calls)."""
    guide = nfe * guided.calls["guide"] / max(guided.calls["denoiser"], 1)
    return {"guide_nfe": guide, "network_nfe": nfe + guide}
