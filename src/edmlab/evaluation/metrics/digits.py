"""Metrics for the embedded 8×8 digits, measured in the feature space of a small classifier trained on them.

Inception-v3 does not see 8×8 one-channel digits meaningfully, so a CNN trained deterministically on the
1,500-image train split plays its role (cached on disk, a few seconds on a CPU to retrain). Samples are compared
with the 297 images of the HELD-OUT split, which neither the generator nor the classifier saw, so copying the
training set earns nothing:

- ``fd``: Fréchet distance (Heusel et al. 2017, Eq. 6) between the penultimate features of the samples and of
  the held-out split, "FID with a digits network".
- ``class_histogram`` / ``class_kl`` / ``class_entropy``: the predicted class frequencies p, KL(p ‖ uniform) =
  Σ p log(10·p) and the entropy −Σ p log p (log 10 ≈ 2.303 for perfect balance); catches mode dropping.
- ``precision`` / ``recall``: improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1–2) with k = 3
  nearest-neighbour balls around each held-out (precision) or generated (recall) feature vector.
- ``train_nn_distance``: the median pixel-space L2 distance d₁ from a sample to its nearest TRAINING image (0 for
  copies), and ``near_copy_fraction``: the fraction of samples with d₁ < d₂/3, d₂ the distance to the second
  nearest training image (the near-copy rule after Carlini et al. 2023, "Extracting training data from diffusion
  models"): memorization as a number.

:meth:`DigitsMetric.real_floor` is what real data scores at the SAME number of images as the samples: the first N
training images against the held-out split (FD, precision and recall depend on N, so the floor does too), and for
the nearest-training-image scores the held-out images themselves (real digits that are not copies).
"""
import contextlib
import hashlib
import inspect
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edmlab.data.digits import digits_arrays
from edmlab.evaluation.metrics.frechet import feature_statistics, frechet_distance
from edmlab.infra.threads import num_threads

NUM_CLASSES = 10
NEAR_COPY_RATIO = 3  # a near copy: d₁ < d₂ / 3
CACHE_FILE = "digits_classifier.pt"
RECIPE = {
    "seed": 0, "epochs": 30, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "shift": 1, "feature_dim": 64,
}  # fmt: skip


class DigitsClassifier(nn.Module):
    """conv(32)–conv(64)–pool–conv(64)–pool on 8×8 → 256 → ``feature_dim`` (the metric's features) → ReLU → 10."""

    def __init__(self, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(256, feature_dim),
        )  # fmt: skip
        self.head = nn.Linear(feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the penultimate layer: no dead (constant) units, so its covariance is full rank."""
        return self.body(x)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(x))


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero = background −1 padding)."""
    if max_shift == 0:
        return x
    n, size = x.shape[0], x.shape[-1]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(size))[:, :, None]
    cols = (dx[:, None] + torch.arange(size))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


@contextlib.contextmanager
def _deterministic_cpu():
    """Deterministic kernels on one thread for the duration of training; the caller's settings come back after."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with num_threads(1):
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def train_digits_classifier(recipe: dict | None = None) -> DigitsClassifier:
    """Adam on the train split with random ±``shift`` pixel translations, cross-entropy, cosine learning rate,
    fixed seed, deterministic kernels on one CPU thread (``recipe`` defaults to :data:`RECIPE`)."""
    recipe = RECIPE if recipe is None else recipe
    images, labels = digits_arrays("train")
    generator = torch.Generator().manual_seed(recipe["seed"])
    with _deterministic_cpu(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        net = DigitsClassifier(recipe["feature_dim"])
        opt = torch.optim.Adam(net.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
        steps_per_epoch = math.ceil(len(labels) / recipe["batch_size"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe["epochs"] * steps_per_epoch)
        net.train()
        for _ in range(recipe["epochs"]):
            order = torch.randperm(len(labels), generator=generator)
            for batch in order.split(recipe["batch_size"]):
                x = _random_shift(images[batch], recipe["shift"], generator)
                loss = F.cross_entropy(net(x), labels[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return net.eval().requires_grad_(False)


_RECIPE_CODE = "".join(inspect.getsource(obj) for obj in (DigitsClassifier, _random_shift, train_digits_classifier))


def recipe_hash(recipe: dict | None = None) -> str:
    """SHA-256 of the recipe values (default :data:`RECIPE`) and of the code that defines and trains the classifier."""
    text = json.dumps(RECIPE if recipe is None else recipe, sort_keys=True) + _RECIPE_CODE
    return hashlib.sha256(text.encode()).hexdigest()


def default_cache_dir() -> str:
    """``$EDMLAB_CACHE`` or ``~/.cache/edmlab``."""
    return os.environ.get("EDMLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edmlab")


@torch.no_grad()
def _accuracy(net: DigitsClassifier, split: str) -> float:
    images, labels = digits_arrays(split)
    return (net(images).argmax(1) == labels).float().mean().item()


def load_digits_classifier(cache_dir: str | os.PathLike | None = None) -> DigitsClassifier:
    """The cached classifier, (re)trained and saved when the file is absent, unreadable or from another recipe."""
    path = os.path.join(os.fspath(cache_dir or default_cache_dir()), CACHE_FILE)
    expected = recipe_hash()
    if os.path.exists(path):
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry["recipe_hash"] == expected:
                net = DigitsClassifier(entry["recipe"]["feature_dim"])
                net.load_state_dict(entry["state_dict"])
                return net.eval().requires_grad_(False)
        except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt
            warnings.warn(f"digits classifier cache {path} is unreadable ({e!r}); retraining it", RuntimeWarning)
    net = train_digits_classifier(RECIPE)
    entry = {
        "recipe_hash": expected,
        "recipe": dict(RECIPE),
        "state_dict": net.state_dict(),
        "test_accuracy": _accuracy(net, "test"),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(entry, tmp)
    os.replace(tmp, path)
    return net


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (Kynkäänniemi et al. 2019, NND_k)."""
    if len(features) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples, got {len(features)}")
    dist = torch.cdist(features, features)
    return dist.kthvalue(k + 1, dim=1).values


def nearest_training_distances(samples: torch.Tensor, train: torch.Tensor) -> tuple[float, float]:
    """(median d₁, fraction with d₁ < d₂/3): d₁, d₂ the L2 distances from each row of ``samples`` [N, P] to its
    nearest and second-nearest row of ``train`` [M ≥ 2, P] (near copies, after Carlini et al. 2023)."""
    d = torch.cdist(samples.double(), train.double()).topk(2, dim=1, largest=False).values
    return d[:, 0].median().item(), (d[:, 0] < d[:, 1] / NEAR_COPY_RATIO).double().mean().item()


def manifold_precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1–2).

    precision = fraction of fake samples inside some ball B(r, NND_k(r)) around a real sample r;
    recall    = fraction of real samples inside some ball B(g, NND_k(g)) around a fake sample g.
    """
    real, fake = real.double(), fake.double()
    cross = torch.cdist(fake, real)
    precision = (cross <= knn_radii(real, k)[None, :]).any(dim=1).double().mean().item()
    recall = (cross <= knn_radii(fake, k)[:, None]).any(dim=0).double().mean().item()
    return precision, recall


def class_balance(predicted: torch.Tensor) -> tuple[tuple[float, ...], float, float]:
    """Class frequencies p, KL(p ‖ uniform) = Σ p log(C·p) and entropy −Σ p log p (0 log 0 = 0)."""
    p = torch.bincount(predicted, minlength=NUM_CLASSES).double() / len(predicted)
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    entropy = -plogp.sum().item()
    return tuple(p.tolist()), math.log(NUM_CLASSES) - entropy, entropy


@dataclass(frozen=True)
class DigitsScores:
    num_images: int
    fd: float
    precision: float
    recall: float
    class_kl: float
    class_entropy: float
    class_histogram: tuple[float, ...]
    train_nn_distance: float
    near_copy_fraction: float

    def scalars(self) -> dict[str, float]:
        """The scalar scores, for loggers."""
        return {key: value for key, value in asdict(self).items() if key != "class_histogram"}


class DigitsMetric:
    """Scores generated digits [N, 1, 8, 8] in [−1, 1] against the held-out split, in the classifier's feature space,
    and by their distance to the training images."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, k: int = 3):
        self.classifier = load_digits_classifier(cache_dir)
        self.k = k
        self.train_images = digits_arrays("train")[0]
        self.train_pixels = self.train_images.flatten(1)
        self.held_out_images = digits_arrays("test")[0]
        self.reference_features = self.features(self.held_out_images)
        self.reference_mu, self.reference_sigma = feature_statistics(self.reference_features)
        self._floors: dict[int, DigitsScores] = {}

    @staticmethod
    def _check(images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise ValueError(f"digits metrics take a tensor [N, 1, 8, 8] in [-1, 1], got {shape}")
        if not torch.isfinite(images).all():
            raise ValueError("generated digits contain NaN or inf; the sampler diverged")
        return images.detach().float().cpu().clamp(-1.0, 1.0)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate classifier features [N, feature_dim]."""
        return self.classifier.features(self._check(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._check(images)).argmax(dim=1)

    def accuracy(self, split: str = "test") -> float:
        images, labels = digits_arrays(split)
        return (self.predict(images) == labels).double().mean().item()

    @torch.no_grad()
    def _feature_scores(self, images: torch.Tensor) -> dict:
        if len(images) <= self.k:
            raise ValueError(f"digits metrics need more than k={self.k} images, got {len(images)}")
        feats = self.classifier.features(images)
        mu, sigma = feature_statistics(feats)
        precision, recall = manifold_precision_recall(self.reference_features, feats, self.k)
        histogram, kl, entropy = class_balance(self.classifier.logits(feats).argmax(dim=1))
        return dict(num_images=len(images), fd=frechet_distance(mu, sigma, self.reference_mu, self.reference_sigma),
                    precision=precision, recall=recall, class_kl=kl, class_entropy=entropy,
                    class_histogram=histogram)

    def __call__(self, images: torch.Tensor) -> DigitsScores:
        images = self._check(images)
        nn_distance, near_copies = nearest_training_distances(images.flatten(1), self.train_pixels)
        return DigitsScores(**self._feature_scores(images), train_nn_distance=nn_distance,
                            near_copy_fraction=near_copies)

    def real_floor(self, num_images: int) -> DigitsScores:
        """What real digits score at ``num_images`` images (at most the 1,500 of the train split): the first
        ``num_images`` training images against the held-out split (FD, precision, recall, class balance), and the
        held-out images' own distances to the training set (``train_nn_distance``, ``near_copy_fraction``)."""
        n = min(int(num_images), len(self.train_images))
        if n not in self._floors:
            nn_distance, near_copies = nearest_training_distances(self.held_out_images.flatten(1), self.train_pixels)
            self._floors[n] = DigitsScores(**self._feature_scores(self.train_images[:n]),
                                           train_nn_distance=nn_distance, near_copy_fraction=near_copies)
        return self._floors[n]
