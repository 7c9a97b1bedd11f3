"""Loss weightings λ(σ) (EDM Table 1, "Loss weighting" row). Paired with its preconditioning,
λ(σ)·c_out(σ)² = 1: the network's effective target has unit weight at every σ."""
import torch


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
