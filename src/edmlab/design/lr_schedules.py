"""Learning-rate schedules α(t), t the images seen before the step (the ``lr_schedule`` config group).

- ``edm``  (NVlabs/edm training_loop.py):  α(t) = lr·min(t / t_rampup, 1).
- ``edm2`` (EDM2 Eq. 16, NVlabs/edm2 ``learning_rate_schedule``):  α(t) = α_ref/√max(t/t_ref, 1)·min(t / t_rampup, 1),
  the inverse square-root decay that EDM2 pairs with its magnitude-preserving network, after a linear warm-up.

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


def learning_rate(nimg: float, schedule: dict) -> float:
    """α(t) of an ``lr_schedule`` config (``kind`` edm or edm2 and that schedule's keywords)."""
    cfg = dict(schedule)
    kind = cfg.pop("kind", "edm")
    if not cfg.get("lr", 0) > 0:
        raise ValueError(f"lr_schedule.lr={cfg.get('lr')} must be > 0 (set optim.lr)")
    if cfg.get("rampup_kimg", 0) < 0:
        raise ValueError(f"lr_schedule.rampup_kimg={cfg['rampup_kimg']} must be >= 0")
    if kind == "edm":
        return edm_lr(nimg, cfg["lr"], cfg.get("rampup_kimg", 0))
    if kind == "edm2":
        if not cfg.get("ref_kimg", 0) >= 0:
            raise ValueError(f"lr_schedule.ref_kimg={cfg.get('ref_kimg')} must be >= 0 (t_ref in thousands of images)")
        return edm2_lr(nimg, cfg["lr"], cfg.get("ref_kimg", 0), cfg.get("rampup_kimg", 0))
    raise ValueError(f"lr_schedule.kind={kind!r} is unknown: use lr_schedule=edm or lr_schedule=edm2")
