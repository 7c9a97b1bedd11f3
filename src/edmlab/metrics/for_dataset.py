"""The metric that fits a data set: digits → the digits classifier's FD & co.; mixture points → distances to the
exact distribution. Image data sets at large (CIFAR-10, folders) use FID through ``edmlab.metrics.inception``."""
import torch


def dataset_metric(dataset):
    """A callable ``images → {name: float}`` for the data set, with a ``floor`` dict (what real data scores), or None."""
    from ..data import DigitsDataset, PointsDataset

    base = getattr(dataset, "base", dataset)
    if isinstance(base, DigitsDataset):
        return DigitsScore()
    if isinstance(base, PointsDataset):
        return MixtureScore(base.mixture)
    return None


class DigitsScore:
    def __init__(self):
        from .digits import DigitsMetric

        self.metric = DigitsMetric()
        self.floor = {f"digits_{k}": v for k, v in self.metric.real_floor().scalars().items()}

    def __call__(self, images):
        return {f"digits_{k}": v for k, v in self.metric(images).scalars().items()}


class MixtureScore:
    def __init__(self, mixture, seed: int = 12345):
        self.mixture, self.seed = mixture, seed
        n = 2000
        g = torch.Generator().manual_seed(seed)
        self.floor = self._score(mixture.sample(n, g), mixture.sample(n, g))

    @staticmethod
    def _score(x, y):
        from .mixture import mmd, sliced_wasserstein

        g = torch.Generator().manual_seed(0)
        return {"mixture_sliced_wasserstein": float(sliced_wasserstein(x, y, generator=g)),
                "mixture_mmd": float(mmd(x, y))}

    def __call__(self, points):
        reference = self.mixture.sample(len(points), torch.Generator().manual_seed(self.seed + 1))
        return self._score(points.double().cpu(), reference)
