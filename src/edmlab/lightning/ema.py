"""EDM's exponential moving average of the weights, defined by a half-life in images (training_loop.py):

    h = min(ema_halflife_kimg·1000, ema_rampup_ratio·cur_nimg),   β = 0.5^(batch / max(h, 1e-8)),
    θ_ema ← β·θ_ema + (1 − β)·θ,

updated after every optimizer step, with cur_nimg the images seen before that step.
"""
import torch


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
