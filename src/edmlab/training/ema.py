"""Moving averages of the weights, chosen by the ``ema`` config group (pure torch; EDM2's phema.py interface:
``update(cur_nimg, batch_size)``, ``state_dict``, ``load_state_dict``; ``averages`` are the averaged copies).

``ema=traditional`` — EDM's half-life EMA (NVlabs/edm training_loop.py):

    h = min(ema_halflife_kimg·1000, ema_rampup_ratio·cur_nimg),   β = 0.5^(batch / max(h, 1e-8)),
    θ_ema ← β·θ_ema + (1 − β)·θ,

updated after every optimizer step, with cur_nimg the images seen before that step.

``ema=power`` — EDM2's power-function EMAs, one per relative std (``edmlab.design.phema``), with snapshots every
``snapshot_kimg`` for the post-hoc reconstruction of any other std.
"""
import copy
from pathlib import Path

import torch

from edmlab.design.phema import check_std, power_function_beta
from edmlab.io.snapshots import save_snapshot, snapshot_path


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


class TraditionalEMA:
    """One half-life EMA of ``net`` (see the module docstring)."""

    def __init__(self, net: torch.nn.Module, halflife_kimg: float = 20, rampup_ratio: float | None = 0.05):
        if not halflife_kimg >= 0:
            raise ValueError(f"ema.halflife_kimg={halflife_kimg} must be >= 0")
        self.net, self.halflife_kimg, self.rampup_ratio = net, halflife_kimg, rampup_ratio
        self.averages = [copy.deepcopy(net).eval().requires_grad_(False)]

    def update(self, cur_nimg: int, batch_size: int) -> None:
        ema_update(self.averages[0], self.net, ema_beta(batch_size, cur_nimg, self.halflife_kimg, self.rampup_ratio))

    def state_dict(self) -> dict:
        return self.averages[0].state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averages[0].load_state_dict(state)


class PowerEMA:
    """Power-function EMAs of ``net``, one per relative std in ``stds`` (EDM2 default 0.05 and 0.10); with a
    ``snapshot_dir``, ``snapshot`` writes all of them (``edmlab.design.phema.save_snapshot``) every ``snapshot_kimg``."""

    def __init__(self, net: torch.nn.Module, stds=(0.05, 0.10), snapshot_kimg: float = 50,
                 snapshot_dir: str | None = None):
        if not stds:
            raise ValueError("ema.stds is empty: give at least one relative std, e.g. [0.05, 0.10]")
        if not snapshot_kimg > 0:
            raise ValueError(f"ema.snapshot_kimg={snapshot_kimg} must be > 0 (thousands of images between snapshots)")
        self.net, self.stds = net, [check_std(s) for s in stds]
        self.snapshot_kimg, self.snapshot_dir = snapshot_kimg, snapshot_dir
        self.averages = [copy.deepcopy(net).eval().requires_grad_(False) for _ in self.stds]

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

    def state_dict(self) -> dict:
        return {"stds": list(self.stds), "emas": [a.state_dict() for a in self.averages]}

    def load_state_dict(self, state: dict) -> None:
        if [float(s) for s in state["stds"]] != self.stds:
            raise ValueError(f"the saved power EMAs track stds {state['stds']}, this run {self.stds}: resume with "
                             f"the same ema.stds")
        for average, s in zip(self.averages, state["emas"]):
            average.load_state_dict(s)


def build_ema(net: torch.nn.Module, cfg: dict):
    """The tracker of an ``ema`` config: ``kind`` traditional (default) or power."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", "traditional")
    cfg.pop("std", None)
    if kind == "traditional":
        return TraditionalEMA(net, cfg.get("halflife_kimg", 20), cfg.get("rampup_ratio", 0.05))
    if kind == "power":
        return PowerEMA(net, cfg.get("stds", (0.05, 0.10)), cfg.get("snapshot_kimg", 50), cfg.get("snapshot_dir"))
    raise ValueError(f"ema.kind={kind!r} is unknown: use ema=traditional (half-life) or ema=power (post-hoc EMA)")
