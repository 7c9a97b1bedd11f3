"""Guidance as a denoiser wrapper, so that every solver gets it (EDM2 ``generate_images.py``; Karras et al. 2024,
"Guiding a Diffusion Model with a Bad Version of Itself", Eq. 1):

    D_w(x; σ) = D_guide(x; σ) + w·(D(x; σ) − D_guide(x; σ))   for σ_lo ≤ σ ≤ σ_hi,   D(x; σ) elsewhere,

w = 1 is D itself. Classifier-free guidance (Ho & Salimans 2022): D_guide is the unconditional model (label
dropout, or a separate unconditional run). Autoguidance: D_guide is a smaller or shorter-trained network of the
same task and conditioning. The interval (Kynkäänniemi et al. 2024) limits guidance to mid noise levels.
Each call inside the interval evaluates both networks: ``calls`` counts them separately.
"""
import math

import torch


def check_guidance(guidance: float, interval=None) -> tuple[float, float]:
    """The interval (σ_lo, σ_hi) after checking w ≥ 0 and 0 ≤ σ_lo < σ_hi (None: every σ)."""
    if not (isinstance(guidance, (int, float)) and guidance >= 0):
        raise ValueError(f"guidance={guidance!r} must be a number >= 0 (1: no guidance, >1 pushes away from the "
                         f"guide; EDM2 uses 1.2-2.5)")
    lo, hi = (0.0, math.inf) if interval is None else (float(interval[0]), float(interval[1]))
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
    """D_w of ``denoiser`` guided by ``guide`` with weight ``guidance`` inside ``interval`` (see the module
    docstring). Other attributes (σ range, round_sigma, label_dim, …) are the guided denoiser's. A guide without
    labels (label_dim 0) is called without them: classifier-free guidance."""

    def __init__(self, denoiser, guide, guidance: float, interval=None):
        self.interval = check_guidance(guidance, interval)
        check_guide(denoiser, guide)
        self.denoiser, self.guide, self.guidance = denoiser, guide, float(guidance)
        self.calls = {"denoiser": 0, "guide": 0}

    def __getattr__(self, name):
        return getattr(self.__dict__["denoiser"], name)

    def __call__(self, x, sigma, class_labels=None, **kwargs):
        labels = {} if class_labels is None else {"class_labels": class_labels}
        denoised = self.denoiser(x, sigma, **labels, **kwargs)
        self.calls["denoiser"] += 1
        everywhere = self.interval == (0.0, math.inf)
        if not everywhere:  # only a limited interval needs σ on the host (one sync per call)
            s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
            inside = (s >= self.interval[0]) & (s <= self.interval[1])
            if not bool(inside.any()):
                return denoised
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


def load_guide(guide: str, denoiser, device="cpu"):
    """The guide of ``src/eval.py guide=...``: ``uncond`` (the same network without labels, CFG) or a run dir /
    network file / checkpoint read by ``edmlab.load`` (autoguidance: an earlier or smaller network)."""
    if str(guide) == "uncond":
        return Unconditional(denoiser)
    from .export import load

    return load(guide, device)


def guided_nfe(guided: GuidedDenoiser, nfe: int) -> dict:
    """Network evaluations per sample when the sampler made ``nfe`` calls per sample: the guide's are
    nfe·(guide calls / denoiser calls)."""
    guide = nfe * guided.calls["guide"] / max(guided.calls["denoiser"], 1)
    return {"guide_nfe": guide, "network_nfe": nfe + guide}
