"""Moving averages of the weights, chosen by the ``ema`` config group (pure torch). Each tracker is built from its
spec (``conf/ema/*.yaml``, ``_target_`` one of the classes below) with ``net=`` the trained network, and keeps
``averages``, the averaged copies (``averages[0]`` is the run's EMA: previews and network.pt).

``ema=traditional`` — EDM's half-life EMA (NVlabs/edm training_loop.py):

    h = min(ema_halflife_kimg·1000, ema_rampup_ratio·cur_nimg),   β = 0.5^(batch / max(h, 1e-8)),
    θ_ema ← β·θ_ema + (1 − β)·θ,

updated after every optimizer step, with cur_nimg the images seen before that step.

``ema=power`` — EDM2's power-function EMAs, one per relative std (``edmlab.design.phema``), with snapshots every
``snapshot_kimg`` for the post-hoc reconstruction of any other std.

The interface the training module drives (``EMATracker``): ``update(cur_nimg, batch_size)`` (EDM2's phema.py), the
hooks ``at_start``, ``after_step`` and ``at_end`` of a run, ``describe()`` (what a resumed run must share: the kind
and the stds) and ``state_dict``/``load_state_dict``, which a checkpoint keeps next to the averages' tensors.
"""
import copy
from pathlib import Path
from typing import NamedTuple

import torch

from edmlab.design.phema import check_std, power_function_beta
from edmlab.io.snapshots import carry_snapshots, save_snapshot, snapshot_path


def ema_beta(batch_size: int, cur_nimg: int, halflife_kimg: float, rampup_ratio: float | None = 0.05) -> float:
    halflife_nimg = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife_nimg = min(halflife_nimg, cur_nimg * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife_nimg, 1e-8))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    for p_ema, p_net in zip(ema.parameters(), net.parameters()):
        p_ema.lerp_(p_net.detach(), 1 - beta)
    for b_ema, b_net in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b_net)


class RunFiles(NamedTuple):
    """What a tracker's files carry besides its weights: the model spec and the run's config. A hook gets it in the
    process that writes the run's files (rank 0), None in the others."""
    model: dict
    config: dict | None


class EMATracker:
    """Averages of ``net``; a subclass defines ``kind``, ``averages`` and ``update``."""

    kind: str
    averages: list[torch.nn.Module]

    def update(self, cur_nimg: int, batch_size: int) -> None:
        """Average in the weights of the optimizer step that followed ``cur_nimg`` images."""
        raise NotImplementedError

    def at_start(self, cur_nimg: int, files: RunFiles | None) -> None:
        """Before the first step of a run (after a resume's ``load_state_dict``)."""

    def after_step(self, cur_nimg: int, batch_size: int, files: RunFiles | None) -> None:
        """After the optimizer step that followed ``cur_nimg`` images."""
        self.update(cur_nimg, batch_size)

    def at_end(self, nimg: int, files: RunFiles | None) -> None:
        """After the last step, at ``nimg`` images."""

    def describe(self) -> dict:
        """What the saved averages mean, which a resumed run must share: the kind and the relative stds (None)."""
        return {"kind": self.kind, "stds": None}

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the tracker besides the averages' tensors (those are the module's)."""
        return self.describe()

    def load_state_dict(self, state: dict) -> None:
        """Refuse the state of other averages (another kind, other stds), naming both values; a key the state lacks
        (an older checkpoint's) is not compared."""
        for key, now in self.describe().items():
            if key in state and state[key] != now:
                raise ValueError(f"the saved EMAs have ema.{key}={state.get(key)}, this run ema.{key}={now}: resume "
                                 f"with ema.{key}={state.get(key)}, or start a new run")


class TraditionalEMA(EMATracker):
    """One half-life EMA of ``net`` (see the module docstring)."""

    kind = "traditional"

    def __init__(self, net: torch.nn.Module, halflife_kimg: float = 20, rampup_ratio: float | None = 0.05):
        if not halflife_kimg >= 0:
            raise ValueError(f"ema.halflife_kimg={halflife_kimg} must be >= 0")
        self.net, self.halflife_kimg, self.rampup_ratio = net, halflife_kimg, rampup_ratio
        self.averages = [copy.deepcopy(net).eval().requires_grad_(False)]

    def update(self, cur_nimg: int, batch_size: int) -> None:
        ema_update(self.averages[0], self.net, ema_beta(batch_size, cur_nimg, self.halflife_kimg, self.rampup_ratio))


class PowerEMA(EMATracker):
    """Power-function EMAs of ``net``, one per relative std in ``stds`` (EDM2 default 0.05 and 0.10); with a
    ``snapshot_dir``, all of them are written (``edmlab.io.snapshots.save_snapshot``) every ``snapshot_kimg`` and
    at the end. A run resumed into another directory first links the earlier run's snapshots up to its checkpoint."""

    kind = "power"

    def __init__(self, net: torch.nn.Module, stds=(0.05, 0.10), snapshot_kimg: float = 50,
                 snapshot_dir: str | None = None):
        if not stds:
            raise ValueError("ema.stds is empty: give at least one relative std, e.g. [0.05, 0.10]")
        if not snapshot_kimg > 0:
            raise ValueError(f"ema.snapshot_kimg={snapshot_kimg} must be > 0 (thousands of images between snapshots)")
        self.net, self.stds = net, [check_std(s) for s in stds]
        self.snapshot_kimg, self.snapshot_dir = snapshot_kimg, snapshot_dir
        self.averages = [copy.deepcopy(net).eval().requires_grad_(False) for _ in self.stds]
        self.earlier_snapshot_dir = None

    def update(self, cur_nimg: int, batch_size: int) -> None:
        """After the optimizer step that followed ``cur_nimg`` images: t = cur_nimg + batch, Δt = batch."""
        for std, average in zip(self.stds, self.averages):
            ema_update(average, self.net, power_function_beta(std, cur_nimg + batch_size, batch_size))

    def snapshot_due(self, cur_nimg: int, batch_size: int) -> bool:
        """Whether the step from ``cur_nimg`` to ``cur_nimg + batch`` images crossed a multiple of snapshot_kimg."""
        interval = self.snapshot_kimg * 1000
        return (cur_nimg + batch_size) // interval > cur_nimg // interval

    def snapshot(self, nimg: int, model_spec: dict, config: dict | None = None) -> Path | None:
        if self.snapshot_dir is None or snapshot_path(self.snapshot_dir, nimg).is_file():
            return None
        return save_snapshot(self.snapshot_dir, nimg, self.stds, self.averages, model_spec, config)

    def at_start(self, cur_nimg: int, files: RunFiles | None) -> None:
        if files is not None and self.earlier_snapshot_dir and self.snapshot_dir is not None:
            carry_snapshots(self.earlier_snapshot_dir, self.snapshot_dir, cur_nimg)

    def after_step(self, cur_nimg: int, batch_size: int, files: RunFiles | None) -> None:
        self.update(cur_nimg, batch_size)
        if files is not None and self.snapshot_due(cur_nimg, batch_size):
            self.snapshot(cur_nimg + batch_size, files.model, files.config)

    def at_end(self, nimg: int, files: RunFiles | None) -> None:
        if files is not None:
            self.snapshot(nimg, files.model, files.config)

    def describe(self) -> dict:
        return {"kind": self.kind, "stds": list(self.stds)}

    def state_dict(self) -> dict:
        return {**self.describe(), "snapshot_dir": self.snapshot_dir}

    def load_state_dict(self, state: dict) -> None:
        """Check the saved EMAs are these; remember the earlier run's snapshots for ``at_start``."""
        super().load_state_dict(state)
        self.earlier_snapshot_dir = state.get("snapshot_dir")
