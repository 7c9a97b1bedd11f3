"""The denoising score-matching loss (EDM Eq. 8):  E_σ E_{y,n} λ(σ)·‖D(y + n; σ) − y‖²,
σ ~ p_train, n ~ N(0, σ²I), with p_train and λ chosen independently of the preconditioning."""
from dataclasses import dataclass

import torch

from .loss_weighting import LossWeighting
from .training_noise import NoiseDistribution


@dataclass
class LossOutput:
    """``loss``: Σ over pixels, mean over images (NVlabs/edm's reduction, so its learning rates carry over);
    ``per_image``: that sum for each image [N]; ``sigma``: the σ each image was trained at [N]."""

    loss: torch.Tensor
    per_image: torch.Tensor
    sigma: torch.Tensor


class DenoisingLoss:
    def __init__(self, noise_distribution: NoiseDistribution, weighting: LossWeighting):
        self.noise_distribution = noise_distribution
        self.weighting = weighting

    def __call__(self, denoiser, images, class_labels=None, augment_pipe=None,
                 generator: torch.Generator | None = None, sigma: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None) -> LossOutput:
        """``sigma`` [N] and unit ``noise`` (shaped like images) may be given, e.g. drawn for a whole global batch so that
        an image's noise does not depend on how the batch is split across devices; else they come from ``generator``."""
        if sigma is None:
            sigma = self.noise_distribution.sample(images.shape[0], generator=generator, device=images.device)
        augment_labels = None
        if augment_pipe is not None:
            images, augment_labels = augment_pipe(images)
        sigma_b = sigma.reshape(-1, *[1] * (images.ndim - 1))
        if noise is None:
            noise = torch.randn(images.shape, generator=generator, device=images.device)
        denoised = denoiser(images + noise * sigma_b, sigma, class_labels=class_labels, augment_labels=augment_labels)
        per_image = (self.weighting(sigma_b) * (denoised - images) ** 2).flatten(1).sum(1)
        return LossOutput(per_image.mean(), per_image.detach(), sigma.detach())
