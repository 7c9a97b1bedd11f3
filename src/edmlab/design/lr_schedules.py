"""Learning-rate schedules α(t), t the images seen before the step (the ``lr_schedule`` config group): each
``conf/lr_schedule/*.yaml`` names one of the classes below with ``_target_``, and calling the built schedule with
t gives α(t).

- ``EDMSchedule``  (NVlabs/edm training_loop.py):  α(t) = lr·min(t / t_rampup, 1).
- ``EDM2Schedule`` (EDM2 Eq. 16, NVlabs/edm2 ``learning_rate_schedule``):
  α(t) = α_ref/√max(t/t_ref, 1)·min(t / t_rampup, 1), the inverse square-root decay that EDM2 pairs with its
  magnitude-preserving network, after a linear warm-up.

Times are given in thousands of images (``rampup_kimg``, ``ref_kimg``); EDM2 counts t_ref in batches
(70000 of 2048 images for img512), i.e. ref_kimg = 143360.
"""
import math


def edm_lr(nimg: float, lr: float, rampup_kimg: float) -> float:
    """lr·min(t / max(t_rampup, 1e-8), 1), exactly as NVlabs/edm (so t = 0 gives 0 even without a ramp-up)."""
    return lr * min(nimg / max(rampup_kimg * 1000, 1e-8), 1)


def edm2_lr(nimg: float, lr: float, ref_kimg: float, rampup_kimg: float) -> float:
    """As NVlabs/edm2: no decay when t_ref = 0, no warm-up when t_rampup = 0."""
    decay = 1 / math.sqrt(max(nimg / (ref_kimg * 1000), 1.0)) if ref_kimg > 0 else 1.0
    return lr * decay * (min(nimg / (rampup_kimg * 1000), 1.0) if rampup_kimg > 0 else 1.0)


def _check(lr: float, rampup_kimg: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr_schedule.lr={lr} must be > 0 (set optim.lr)")
    if not rampup_kimg >= 0:
        raise ValueError(f"lr_schedule.rampup_kimg={rampup_kimg} must be >= 0")


class EDMSchedule:
    """EDM's linear ramp-up over ``rampup_kimg`` thousand images to ``lr``, then constant (``edm_lr``)."""

    def __init__(self, lr: float, rampup_kimg: float = 10000):
        _check(lr, rampup_kimg)
        self.lr, self.rampup_kimg = lr, rampup_kimg

    def __call__(self, nimg: float) -> float:
        return edm_lr(nimg, self.lr, self.rampup_kimg)


class EDM2Schedule:
    """EDM2's warm-up over ``rampup_kimg``, then ``lr``/√(t/t_ref) after t_ref = ``ref_kimg`` thousand images
    (``edm2_lr``); the defaults are NVlabs/edm2's img512 (70000 batches of 2048, 10 Mi images of warm-up)."""

    def __init__(self, lr: float, ref_kimg: float = 143360, rampup_kimg: float = 10000):
        _check(lr, rampup_kimg)
        if not ref_kimg >= 0:
            raise ValueError(f"lr_schedule.ref_kimg={ref_kimg} must be >= 0 (t_ref in thousands of images)")
        self.lr, self.ref_kimg, self.rampup_kimg = lr, ref_kimg, rampup_kimg

    def __call__(self, nimg: float) -> float:
        return edm2_lr(nimg, self.lr, self.ref_kimg, self.rampup_kimg)
