"""The metric that fits a data set: digits → the digits classifier's FD & co.; mixture points → distances to the
exact distribution. Image data sets at large (CIFAR-10, folders) use FID through ``edmlab.evaluation.metrics.inception``
and FD-DINOv2 through ``edmlab.evaluation.metrics.dinov2``.

A scorer is ``samples → {name: float}``, and ``scorer.floor(n)`` is what real data scores at the same count n
(its keys say ``floor``, so a reader cannot take it for the model's score)."""
import torch


def dataset_metric(dataset):
    """The scorer of the data set, or None."""
    from edmlab.data import DigitsDataset, PointsDataset

    base = getattr(dataset, "base", dataset)
    if isinstance(base, DigitsDataset):
        return DigitsScore()
    if isinstance(base, PointsDataset):
        return MixtureScore(base.mixture)
    return None


class DigitsScore:
    """``digits_*``: samples against the held-out split; ``digits_floor_*``: training images against it."""

    def __init__(self):
        from edmlab.evaluation.metrics.digits import DigitsMetric

        self.metric = DigitsMetric()

    def __call__(self, images) -> dict:
        return {f"digits_{k}": v for k, v in self.metric(images).scalars().items()}

    def floor(self, num_samples: int) -> dict:
        return {f"digits_floor_{k}": v for k, v in self.metric.real_floor(num_samples).scalars().items()}


class MixtureScore:
    """``mixture_*``: samples against as many exact draws; ``mixture_floor_*``: exact draws against exact draws."""

    def __init__(self, mixture, seed: int = 12345):
        self.mixture, self.seed = mixture, seed

    @staticmethod
    def _score(x, y) -> dict:
        from edmlab.evaluation.metrics.mixture import mmd, sliced_wasserstein

        g = torch.Generator().manual_seed(0)
        return {"sliced_wasserstein": float(sliced_wasserstein(x, y, generator=g)), "mmd": float(mmd(x, y))}

    def __call__(self, points) -> dict:
        reference = self.mixture.sample(len(points), torch.Generator().manual_seed(self.seed + 1))
        return {f"mixture_{k}": v for k, v in self._score(points.double().cpu(), reference).items()}

    def floor(self, num_samples: int) -> dict:
        g = torch.Generator().manual_seed(self.seed)
        scores = self._score(self.mixture.sample(num_samples, g), self.mixture.sample(num_samples, g))
        return {f"mixture_floor_{k}": v for k, v in scores.items()} | {"mixture_floor_num_samples": num_samples}
