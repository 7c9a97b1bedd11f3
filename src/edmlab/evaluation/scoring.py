"""The scores of a job's samples, by what the model was trained on:

- digits: the digits-classifier Fréchet distance, precision/recall, class balance and near copies against the
  held-out split, with the real floor at the same sample count (``edmlab.evaluation.metrics.for_dataset``);
- a Gaussian mixture (``data=mixture``, or ``bench:<preset>``): sliced Wasserstein and MMD to the true distribution
  (and the exact-ODE error, ``reference.py``);
- any image model with ``metrics.fid.ref``: Inception FID (``metrics.kid``, ``metrics.isc`` for KID and IS,
  ``metrics.prc`` for precision/recall of the Inception features); ``metrics.fid.detector=nvlabs`` scores with
  NVlabs' own detector file (``edmlab.evaluation.metrics.nvlabs_inception``) instead of torch-fidelity's.
  EDM's protocol: 50,000 images, reference statistics of the whole data set, the minimum FID over the seed
  ranges 0–49999, 50000–99999, 100000–149999 (``metrics=fid50k``, i.e. ``metrics.fid.seed_ranges=3``).
  FID needs no gathered images: the ranks all-reduce the sums of the features and of their centred outer
  products; KID and IS gather the features or logits.
- any image model with ``metrics.fd_dinov2.enabled``: EDM2's FD-DINOv2, the same Fréchet distance of DINOv2
  ViT-L/14 features (``edmlab.evaluation.metrics.dinov2``) against ``metrics.fd_dinov2.ref`` (NVlabs/edm2's dataset-refs
  ``.pkl``, or ``ref_stats --detector dinov2``), over the same seed ranges as FID.
- ``metrics.nll.enabled``: the negative log-likelihood of held-out data through the probability-flow ODE
  (``edmlab.sampling.likelihood``; ``nll`` in nats per sample, ``bits_per_dim`` for images, dequantized on their
  levels), over the sampler's σ range; for a mixture, the true density's NLL of the same points as its floor.
"""
from dataclasses import dataclass

import numpy as np
import torch

from edmlab.infra.distributed import Ranks, mean_covariance
from edmlab.infra.images import to_uint8
from edmlab.evaluation.subject import Subject, component


def dataset_scorer(subject: Subject, class_label: int | None):
    """``samples → {name: value}`` with ``floor(n)`` for the subject's data, or None."""
    from edmlab.evaluation.metrics.for_dataset import MixtureScore, dataset_metric

    if subject.mixture is not None:
        mixture = subject.mixture if class_label is None else component(subject.mixture, class_label)
        return MixtureScore(mixture)
    return dataset_metric(subject.dataset) if subject.dataset is not None else None


REFERENCE_KEYS = {"fid": "metrics.fid.ref", "fd_dinov2": "metrics.fd_dinov2.ref"}
REFERENCE_HINTS = {
    "fid": "a DINOv2 file?; use NVlabs/edm's reference .npz, NVlabs/edm2's dataset-refs .pkl or `python -m "
           "edmlab.evaluation.metrics.ref_stats`",
    "fd_dinov2": "an Inception .npz?; use NVlabs/edm2's dataset-refs .pkl or `python -m edmlab.cli.ref_stats "
                 "--detector dinov2`"}


def feature_size(metric: str) -> tuple[int, str]:
    """(feature size, network name) of the features that ``metric`` compares with its reference statistics."""
    if metric == "fid":
        from edmlab.evaluation.metrics.nvlabs_inception import FEATURE_DIM

        return FEATURE_DIM, "Inception-v3 pool3"  # torch-fidelity's detector and NVlabs' alike
    from edmlab.evaluation.metrics.dinov2 import feature_dim

    return feature_dim(), "DINOv2"


def reference_statistics(metric: str, path) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of ``metric``'s reference file (fid: ``metrics.fid.ref``, fd_dinov2: ``metrics.fd_dinov2.ref``),
    refused in one line naming the key when it is missing, not statistics, or of another feature size than the
    metric's network: the size would otherwise fail only in the Fréchet distance, after every sample is drawn."""
    from edmlab.evaluation.metrics.frechet import load_statistics

    key = REFERENCE_KEYS[metric]
    try:
        mu, sigma = load_statistics(path, metric=metric)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{key}: {e}") from None
    features, network = feature_size(metric)
    if mu.shape[0] != features:
        raise ValueError(f"{key}={path} holds {mu.shape[0]}-d statistics, but {network} features are "
                         f"{features}-d ({REFERENCE_HINTS[metric]})")
    return mu, sigma


def check_references(mcfg) -> None:
    """Read and check every reference file of the job's metrics (``reference_statistics``): called at job start,
    before the checkpoint is loaded and any sample is drawn."""
    if mcfg.fid.ref is not None:
        reference_statistics("fid", mcfg.fid.ref)
    dino = mcfg.get("fd_dinov2") or {}
    if dino.get("enabled", False) and dino.get("ref") is not None:
        reference_statistics("fd_dinov2", dino["ref"])


class InceptionScores:
    """FID (min over seed ranges), KID and IS of image samples, with torch-fidelity's Inception-v3."""

    def __init__(self, mcfg, device, ranks: Ranks = Ranks()):
        fid = mcfg.fid
        self.weights_path, self.batch, self.method, self.device = fid.weights_path, int(fid.batch), fid.method, device
        self.ref = reference_statistics("fid", fid.ref) if fid.ref is not None else None
        self.kid, self.isc, self.ranks = bool(mcfg.kid), bool(mcfg.isc), ranks
        self.prc = bool(mcfg.get("prc", False))
        self.detector, self.detector_path = fid.get("detector", "torch-fidelity"), fid.get("detector_path")
        if self.detector not in ("torch-fidelity", "nvlabs"):
            raise ValueError(f"metrics.fid.detector={self.detector!r}: choose torch-fidelity or nvlabs")
        if self.detector == "nvlabs" and self.isc:
            raise ValueError("metrics.isc=true needs Inception logits, which metrics.fid.detector=nvlabs does not "
                             "give (features only): use metrics.fid.detector=torch-fidelity for IS")
        self.ref_features = None
        if self.active:
            from edmlab.evaluation.metrics.inception import resolve_weights
            from edmlab.evaluation.metrics.nvlabs_inception import load_detector

            load_detector(self.detector_path) if self.detector == "nvlabs" else resolve_weights(self.weights_path)
        if (self.kid or self.prc) and ranks.is_zero:
            from edmlab.evaluation.metrics.ref_stats import load_uint8_images

            if mcfg.ref_images is None:
                raise ValueError("metrics.kid=true / metrics.prc=true compare with real images: set "
                                 "metrics.ref_images=digits, cifar10 (with metrics.ref_root) or a folder/ZIP of images")
            real = load_uint8_images(str(mcfg.ref_images), str(mcfg.ref_root), max_images=mcfg.max_ref_images)
            self.ref_features = self._outputs_uint8(real)["pool"]

    @property
    def active(self) -> bool:
        return self.ref is not None or self.kid or self.isc or self.prc

    def outputs(self, images: torch.Tensor) -> dict:
        """This rank's Inception features (``pool``) and logits of ``images`` in [−1, 1]."""
        return self._outputs_uint8(to_uint8(images))

    def _outputs_uint8(self, images_uint8: torch.Tensor) -> dict:
        if self.detector == "nvlabs":
            from edmlab.evaluation.metrics.nvlabs_inception import nvlabs_features

            return {"pool": nvlabs_features(images_uint8, self.detector_path, self.batch, self.device)}
        from edmlab.evaluation.metrics.inception import inception_outputs

        return inception_outputs(images_uint8, self.weights_path, self.batch, self.device)

    def scores(self, out: dict, first_range: bool) -> dict:
        """The scores of every rank's ``outputs`` together (a collective): complete on rank 0, empty elsewhere.
        The collectives come first, then rank 0 alone computes, so a failure there leaves no rank inside one."""
        from edmlab.evaluation.metrics.frechet import frechet_distance
        from edmlab.evaluation.metrics.inception import fid_from_features, inception_score_from_logits, kid_from_features

        ranks = self.ranks
        statistics = mean_covariance(out["pool"], ranks) if self.ref is not None and ranks.world > 1 else None
        pool = ranks.gather_rows(out["pool"]) if first_range and (self.kid or self.prc) else None
        logits = ranks.gather_rows(out["logits"]) if first_range and self.isc else None
        if not ranks.is_zero:
            return {}
        scores = {}
        if statistics is not None:
            scores["fid"] = frechet_distance(*statistics, *self.ref, method=self.method)
        elif self.ref is not None:
            scores["fid"] = fid_from_features(out["pool"], self.ref, self.method)
        if pool is not None and self.kid:
            scores["kid_mean"], scores["kid_std"] = kid_from_features(pool, self.ref_features)
        if pool is not None and self.prc:
            from edmlab.evaluation.metrics.digits import manifold_precision_recall

            scores["precision"], scores["recall"] = manifold_precision_recall(self.ref_features.to(pool.dtype), pool)
        if logits is not None:
            scores["is_mean"], scores["is_std"] = inception_score_from_logits(logits)
        return scores


class DINOv2Scores:
    """FD-DINOv2 of image samples (NVlabs/edm2 ``calculate_metrics.py``): the Fréchet distance of their DINOv2
    ViT-L/14 features to ``metrics.fd_dinov2.ref``, the statistics all-reduced over the ranks as for FID."""

    def __init__(self, mcfg, device, ranks: Ranks = Ranks()):
        from edmlab.evaluation.metrics.dinov2 import load_dinov2

        cfg = mcfg.get("fd_dinov2") or {}
        self.enabled, self.ranks, self.device = bool(cfg.get("enabled", False)), ranks, device
        self.weights_path, self.batch = cfg.get("weights_path"), int(cfg.get("batch", 64))
        self.method = cfg.get("method", "sqrtm")
        ref = cfg.get("ref")
        if not self.enabled:
            self.ref = None
            if ref is not None:
                raise ValueError(f"metrics.fd_dinov2.ref={ref} is set but metrics.fd_dinov2.enabled=false: add "
                                 f"metrics.fd_dinov2.enabled=true (or drop the ref)")
            return
        if ref is None:
            raise ValueError("metrics.fd_dinov2.enabled=true needs metrics.fd_dinov2.ref=<NVlabs/edm2 dataset-refs "
                             ".pkl, e.g. img512.pkl, or an .npz of `python -m edmlab.cli.ref_stats --detector "
                             "dinov2`>")
        self.ref = reference_statistics("fd_dinov2", ref)
        load_dinov2(self.weights_path, device)  # a missing or foreign weights file fails before sampling too

    @property
    def active(self) -> bool:
        return self.enabled

    def outputs(self, images: torch.Tensor) -> dict:
        """This rank's DINOv2 features (``dinov2``) of ``images`` in [−1, 1]."""
        from edmlab.evaluation.metrics.dinov2 import dinov2_features

        return {"dinov2": dinov2_features(to_uint8(images), self.weights_path, self.batch, self.device)}

    def scores(self, out: dict, first_range: bool) -> dict:
        """``fd_dinov2`` of every rank's ``outputs`` together (a collective): on rank 0, empty elsewhere."""
        from edmlab.evaluation.metrics.frechet import frechet_distance, frechet_distance_to_statistics

        statistics = mean_covariance(out["dinov2"], self.ranks) if self.ranks.world > 1 else None
        if not self.ranks.is_zero:
            return {}
        if statistics is not None:
            return {"fd_dinov2": frechet_distance(*statistics, *self.ref, method=self.method)}
        return {"fd_dinov2": frechet_distance_to_statistics(out["dinov2"], *self.ref, method=self.method)}


NLL_SEED = 2718  # the bench's held-out draws; + 1: the dequantization noise, + 2: Hutchinson's probes
IMAGE_LEVELS = {"DigitsDataset": 17}  # the level count of each image data set with a held-out split (digits: k/8 − 1)


def nll_enabled(mcfg) -> bool:
    return bool((mcfg.get("nll") or {}).get("enabled", False))


@dataclass
class HeldOut:
    """The data ``metrics.nll`` scores: points or images, their class indices (None: unconditional) and the
    images' level count in [−1, 1] (None: continuous points)."""

    x: torch.Tensor
    labels: torch.Tensor | None
    levels: int | None


def held_out_data(subject: Subject, num_samples: int, class_label: int | None) -> HeldOut:
    """The first ``num_samples`` held-out items of the subject's data (of class ``class_label`` when given): draws of
    the bench's mixture (seed ``NLL_SEED``), else the data set's held-out split; refused in one line when there is
    none, or when the images' levels (needed for bits/dim) are not known."""
    if subject.dataset is None and subject.mixture is not None:
        mixture = subject.mixture if class_label is None else component(subject.mixture, class_label)
        x = mixture.sample(num_samples, torch.Generator().manual_seed(NLL_SEED))
        return HeldOut(x, None if class_label is None else torch.full((num_samples,), class_label), None)
    base = getattr(subject.dataset, "base", subject.dataset)
    name = type(base).__name__
    missing = ("no held-out split" if not hasattr(base, "held_out") else
               "images of unknown levels in [-1, 1]" if subject.is_image and name not in IMAGE_LEVELS else None)
    if missing:
        raise ValueError(f"metrics.nll needs held-out data of a known range, but this {subject.kind} has {missing}: "
                         f"use ckpt=bench:<preset>, a points run or an image run of {', '.join(IMAGE_LEVELS)} (or "
                         f"metrics.nll.enabled=false)")
    held = base.held_out()
    items = [held[i] for i in range(len(held))]
    if class_label is not None:
        items = [item for item in items if int(item[1]) == class_label]
    items = items[:num_samples]
    x = torch.stack([item[0] for item in items])
    labels = torch.stack([torch.as_tensor(item[1]) for item in items]) if subject.label_dim else None
    return HeldOut(x, labels, IMAGE_LEVELS[name] if subject.is_image else None)


def true_log_prob(mixture, x: torch.Tensor, sigma: float, labels: torch.Tensor | None) -> torch.Tensor:
    """log p(x; σ) of the mixture, or of each point's own component when ``labels`` are given."""
    if labels is None:
        return mixture.log_prob(x, sigma)
    out = torch.empty(len(x), dtype=torch.float64)
    for k in labels.unique().tolist():
        rows = labels == k
        out[rows] = component(mixture, k).log_prob(x[rows], sigma)
    return out


def nll_scores(ncfg, subject: Subject, class_label: int | None, sigma_range: tuple[float, float],
               batch: int) -> tuple[dict, dict]:
    """(scores, floor) of ``metrics.nll``: ``nll`` = −mean log p (nats per sample) of the held-out data over
    σ_min → σ_max, its standard error ``nll_sem``, denoiser calls per item ``nll_nfe``, the count, and for images
    ``bits_per_dim`` (uniform dequantization on the data's levels); floor: ``nll_floor``, the true mixture's."""
    from edmlab.sampling.likelihood import bits_per_dim, dequantize, gaussian_log_prob, ode_to_noise

    held = held_out_data(subject, int(ncfg.num_samples), class_label)
    x = held.x.to(torch.float64)
    if held.levels is not None:
        x = dequantize(x, held.levels, generator=torch.Generator().manual_seed(NLL_SEED + 1))
    onehot = (torch.eye(subject.label_dim, dtype=torch.float64)[held.labels]
              if subject.label_dim and held.labels is not None else None)
    lo, hi = sigma_range
    probes = torch.Generator().manual_seed(NLL_SEED + 2)
    log_p, calls = [], []
    for start in range(0, len(x), batch):
        rows = slice(start, start + batch)
        flow = ode_to_noise(subject.denoiser, x[rows].to(subject.device), sigma_min=lo, sigma_max=hi,
                            divergence=str(ncfg.divergence), probes=int(ncfg.probes), probe=str(ncfg.probe),
                            rtol=float(ncfg.rtol), atol=float(ncfg.atol), generator=probes,
                            class_labels=None if onehot is None else onehot[rows].to(subject.device))
        log_p.append((gaussian_log_prob(flow.latent, hi) + flow.integral).cpu())
        calls.append(flow.nfe.cpu())
    log_p, calls = torch.cat(log_p), torch.cat(calls)
    n = len(log_p)
    scores = {"nll": -log_p.mean().item(), "nll_sem": (log_p.std() / n**0.5).item() if n > 1 else 0.0,
              "nll_nfe": calls.double().mean().item(), "nll_num_samples": n}
    if held.levels is not None:
        scores["bits_per_dim"] = bits_per_dim(log_p, x[0].numel(), "uniform", held.levels).mean().item()
    floor = {}
    if subject.mixture is not None:
        truth = true_log_prob(subject.mixture, x, lo, held.labels if onehot is not None else None)
        floor["nll_floor"] = -truth.mean().item()
    return scores, floor
