"""Images by seed, as NVlabs/edm's generate.py: image k comes from its own random stream (latents, then class,
then churn noise), so it is the same whatever the batch it is drawn in."""
from dataclasses import dataclass

import torch

from edmlab.sampling.rng import SeedStreams
from edmlab.sampling.sampler import sample


@dataclass
class Drawn:
    samples: torch.Tensor  # CPU; float32 images [N, C, H, W] in [−1, 1], float64 points [N, D]
    latents: torch.Tensor | None  # CPU float64, the unscaled N(0, I) draws (None: not gathered from the ranks)
    labels: torch.Tensor | None  # class index per sample, or None (unconditional)
    seeds: list


def draw(denoiser, shape, seeds, batch: int, sampler_kwargs: dict, device, label_dim: int = 0,
         class_label: int | None = None) -> Drawn:
    """Samples for ``seeds``, ``batch`` at a time; per seed one stream gives the latents, then the class
    (a random one, replaced by ``class_label`` when given, as EDM), then the churn noise."""
    seeds = list(seeds)
    samples, latents, labels = [], [], []
    for start in range(0, len(seeds), batch):
        streams = SeedStreams(seeds[start : start + batch], device=device)
        z = streams.randn(shape)
        onehot = None
        if label_dim:
            index = streams.randint(label_dim, [1])[:, 0]
            if class_label is not None:
                index = torch.full_like(index, class_label)
            onehot = torch.eye(label_dim, device=device)[index]
            labels.append(index.cpu())
        x = sample(denoiser, z.to(torch.float64), generator=streams, class_labels=onehot, **sampler_kwargs)
        samples.append(x.to(torch.float32 if len(shape) == 3 else torch.float64).cpu())
        latents.append(z.to(torch.float64).cpu())
    return Drawn(torch.cat(samples), torch.cat(latents), torch.cat(labels) if labels else None, seeds)
