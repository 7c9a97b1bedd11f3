"""The ``objective`` group: what a training step minimises.

- ``denoising``: EDM's loss (Eq. 8), σ from the ``noise_distribution`` group, λ(σ) from ``loss_weighting``
  (``edmlab.design.loss.DenoisingLoss``);
- ``ict``, ``ect``, ``scm``: consistency training (``edmlab.design.consistency``), which draw their own σ (and r)
  and weight them themselves; the two groups are then not read.
"""
from edmlab.infra.spec import build


def build_objective(spec: dict | None, noise_distribution, weighting):
    """The loss object of an ``objective`` spec (a ``_target_`` dict; None: denoising), given the built
    ``noise_distribution`` and ``loss_weighting`` of the run."""
    from edmlab.design.loss import DenoisingLoss

    spec = dict(spec or {"_target_": "edmlab.design.loss.DenoisingLoss"})
    target = spec.get("_target_")
    if target in ("edmlab.design.loss.DenoisingLoss", None):
        return DenoisingLoss(noise_distribution, weighting)
    return build(spec)
