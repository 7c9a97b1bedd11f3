"""Loss weightings λ(σ) (EDM Table 1, "Loss weighting" row). Paired with its preconditioning,
λ(σ)·c_out(σ)² = 1: the network's effective target has unit weight at every σ. ``LearnedWeighting`` (EDM2)
divides λ by a learned e^{u(σ)}."""
import math

import torch
from torch import nn


class LossWeighting:
    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InverseVariance(LossWeighting):
    """λ(σ) = 1/σ² (VP and VE)."""

    def __call__(self, sigma):
        return 1 / sigma**2


class EDMWeighting(LossWeighting):
    """λ(σ) = (σ² + σ_d²)/(σ·σ_d)²."""

    def __init__(self, sigma_data=0.5):
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got sigma_data={sigma_data}")
        self.sigma_data = sigma_data

    def __call__(self, sigma):
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class FlowWeighting(LossWeighting):
    """λ(σ) = (1 + σ)²/σ² = 1/t² = 1/c_out(σ)² of ``FlowPrecond``: EDM's loss λ(σ)·‖D − y‖² becomes flow
    matching's ‖F − (ε − x₀)‖² (Lipman et al. 2023; SD3's L_CFM)."""

    def __call__(self, sigma):
        return (1 + sigma) ** 2 / sigma**2


class LearnedWeighting(nn.Module, LossWeighting):
    """EDM2's uncertainty-based weighting (Eq. 21, after Kendall et al. 2018): the per-pixel loss
    λ(σ)/e^{u(σ)}·(D − y)² + u(σ), whose minimum over u is at e^{u(σ)} = E[λ(σ)·(D − y)²], so the effective weight
    1/e^{u} flattens the loss over σ as training proceeds. u(σ) = w·φ(c_noise(σ)) is one linear layer (no bias) on
    fixed Fourier features φ_k(c) = √2·cos(2π(f_k·c + φ_k)), f_k ~ N(0, fourier_scale²), φ_k ~ U(0, 1) (EDM2's
    MPFourier; ``fourier_scale`` 1 suits c_noise = ¼ ln σ, use ~0.01 for the VP/iDDPM c_noise up to 999).
    c_noise comes from the preconditioning, λ from ``base`` (EDM's weighting by default). w starts at 0 (u ≡ 0),
    where EDM2's magnitude-preserving layer starts at a random unit-norm w.
    """

    def __init__(self, base: dict | LossWeighting | None = None, num_features: int = 128, fourier_scale: float = 1.0,
                 seed: int = 0, sigma_data: float = 0.5):
        super().__init__()
        if not (isinstance(num_features, int) and num_features >= 1):
            raise ValueError(f"loss_weighting.num_features={num_features!r} must be a positive integer")
        if isinstance(base, dict):
            from edmlab.infra.spec import build

            base = build(base)
        self.base = base if base is not None else EDMWeighting(sigma_data)
        from edmlab.nets.edm2 import MPFourier

        self.fourier = MPFourier(num_features, fourier_scale, generator=torch.Generator().manual_seed(seed))
        self.linear = nn.Linear(num_features, 1, bias=False)
        nn.init.zeros_(self.linear.weight)

    def u(self, c_noise: torch.Tensor) -> torch.Tensor:
        """u(σ) for c_noise(σ) of any shape (same shape out), in float32."""
        return self.linear(self.fourier(c_noise.to(torch.float32).reshape(-1))).reshape(c_noise.shape)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before the features moved into ``fourier`` stored f_k and φ_k without the 2π."""
        for name in ("freqs", "phases"):
            if prefix + name in state_dict:
                state_dict[f"{prefix}fourier.{name}"] = 2 * math.pi * state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, sigma):
        return self.base(sigma)
