"""The denoising score-matching loss (EDM Eq. 8):  E_σ E_{y,n} λ(σ)·‖D(y + n; σ) − y‖²,
σ ~ p_train, n ~ N(0, σ²I), with p_train and λ chosen independently of the preconditioning.

With a learned weighting (``LearnedWeighting``, EDM2 Eq. 21) each pixel's term is λ(σ)/e^{u(σ)}·(D − y)² + u(σ),
u a function of the preconditioning's c_noise(σ)."""
from dataclasses import dataclass

import torch

from edmlab.design.loss_weighting import LossWeighting
from edmlab.design.training_noise import NoiseDistribution


@dataclass
class LossOutput:
    """``loss``: Σ over pixels, mean over images (NVlabs/edm's reduction, so its learning rates carry over);
    ``per_image``: Σ over pixels of λ(σ)·(D − y)² for each image [N] (without a learned weighting's e^{u} and u, so
    that it compares across weightings); ``sigma``: the σ each image was trained at [N]."""

    loss: torch.Tensor
    per_image: torch.Tensor
    sigma: torch.Tensor


def step_inputs(noise_distribution, images, augment_pipe, generator, sigma, noise):
    """(images, augment_labels, σ, unit noise) of one loss call: the given σ and noise, or draws from ``generator``
    (σ first, then the noise, as every objective), the images through the augment pipe when there is one."""
    if sigma is None:
        sigma = noise_distribution.sample(images.shape[0], generator=generator, device=images.device)
    augment_labels = None
    if augment_pipe is not None:
        images, augment_labels = augment_pipe(images)
    if noise is None:
        noise = torch.randn(images.shape, generator=generator, device=images.device)
    return images, augment_labels, sigma, noise


class DenoisingLoss:
    def __init__(self, noise_distribution: NoiseDistribution, weighting: LossWeighting):
        self.noise_distribution = noise_distribution
        self.weighting = weighting

    def set_progress(self, cur_nimg: int) -> None:
        """The loss does not change over training (an objective's schedule would move here)."""

    def __call__(self, denoiser, images, class_labels=None, augment_pipe=None,
                 generator: torch.Generator | None = None, sigma: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None) -> LossOutput:
        """``sigma`` [N] and unit ``noise`` (shaped like images) may be given, e.g. drawn for a whole global batch so that
        an image's noise does not depend on how the batch is split across devices; else they come from ``generator``."""
        images, augment_labels, sigma, noise = step_inputs(self.noise_distribution, images, augment_pipe, generator,
                                                           sigma, noise)
        sigma_b = sigma.reshape(-1, *[1] * (images.ndim - 1))
        u = self.log_variance(denoiser, sigma) if hasattr(self.weighting, "u") else None
        denoised = denoiser(images + noise * sigma_b, sigma, class_labels=class_labels, augment_labels=augment_labels)
        per_image = (self.weighting(sigma_b) * (denoised - images) ** 2).flatten(1).sum(1)
        if u is None:
            return LossOutput(per_image.mean(), per_image.detach(), sigma.detach())
        learned = per_image / u.exp() + u * images[0].numel()
        return LossOutput(learned.mean(), per_image.detach(), sigma.detach())

    def log_variance(self, denoiser, sigma: torch.Tensor) -> torch.Tensor:
        """u(σ) [N] of a learned weighting: the preconditioning's own u(σ) head when it has one (``logvar``,
        EDM2's Precond, saved with the network), else the weighting's, from the preconditioning's c_noise(σ)."""
        if callable(getattr(denoiser, "logvar", None)):
            return denoiser.logvar(sigma).reshape(sigma.shape)
        coefficients = getattr(denoiser, "coefficients", None)
        if coefficients is None:
            raise ValueError(f"loss_weighting=learned needs c_noise(σ) from the preconditioning, and "
                             f"{type(denoiser).__name__} has no coefficients(σ): use an edmlab preconditioning "
                             f"(preconditioning=edm/vp/ve/iddpm) or another loss_weighting")
        c_noise = coefficients(sigma.to(torch.float32).reshape(-1, 1))[3]
        return self.weighting.u(c_noise.reshape(-1)).reshape(sigma.shape)
