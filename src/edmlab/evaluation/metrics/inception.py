"""Inception-v3 metrics through torch-fidelity: FID (2048-d ``pool3`` features), KID and Inception Score.

torch-fidelity's ``FeatureExtractorInceptionV3`` is the TF ``inception-2015-12-05`` graph that NVlabs/edm and
StyleGAN use: uint8 RGB in, bilinear resize to 299×299 the TF1 way, (x − 128)/128 inside. Grayscale is tiled to
three channels (NVlabs/edm ``fid.py``). Float images in [−1, 1] become uint8 by ``edmlab.infra.images.to_uint8``.

The weights: ``edmlab.evaluation.metrics.inception_weights`` (found, checked, downloaded where a network answers).
"""
import os

import numpy as np
import torch

from edmlab.evaluation.metrics.frechet import frechet_distance_to_statistics, load_statistics
from edmlab.evaluation.metrics.inception_weights import (FEATURE_POOL, InceptionWeightsError, _missing_weights_message,
                                                         cached_weights_path, resolve_weights, weights_file,
                                                         weights_url)

FEATURE_LOGITS = "logits_unbiased"

MAX_CACHED_EXTRACTORS = 2

_EXTRACTORS: dict[tuple[str | None, str], torch.nn.Module] = {}




def inception_extractor(weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """torch-fidelity's InceptionV3 giving (pool3 [N, 2048], unbiased logits [N, 1008]); kept per file and device."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = resolve_weights(weights_path)
    key = (path, str(torch.device(device)))
    if key not in _EXTRACTORS:
        try:
            net = FeatureExtractorInceptionV3(
                "inception-v3-compat", [FEATURE_POOL, FEATURE_LOGITS], feature_extractor_weights_path=path
            )
        except Exception as e:  # noqa: BLE001 - torch.load and load_state_dict fail in many ways on a bad file
            if path is None and isinstance(e, OSError):
                raise InceptionWeightsError(_missing_weights_message(f"downloading the weights failed ({e})")) from e
            raise ValueError(
                f"{path or cached_weights_path()} is not an InceptionV3 state_dict for torch-fidelity ({e}); "
                f"replace it with '{weights_file()}' from {weights_url()}"
            ) from e
        if len(_EXTRACTORS) >= MAX_CACHED_EXTRACTORS:
            _EXTRACTORS.pop(next(iter(_EXTRACTORS)))
        _EXTRACTORS[key] = net.to(device)
    return _EXTRACTORS[key]


def _as_rgb_uint8(images: torch.Tensor | np.ndarray, network: str = "Inception") -> torch.Tensor:
    """uint8 [N, 3, H, W]: grayscale tiled to three channels (NVlabs/edm fid.py); ``network`` names the
    feature network in the errors (DINOv2 uses this too)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype != torch.uint8:
        raise TypeError(
            f"{network} input must be uint8 [N, C, H, W], got {images.dtype}; "
            "convert images in [-1, 1] with edmlab.infra.images.to_uint8"
        )
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{network} input must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


@torch.no_grad()
def inception_outputs(
    images_uint8: torch.Tensor | np.ndarray,
    weights_path: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """``{'pool': [N, 2048], 'logits': [N, 1008]}`` float32 on the CPU for uint8 images [N, 1|3, H, W]."""
    images = _as_rgb_uint8(images_uint8)
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    net = inception_extractor(weights_path, device)
    pools, logits = [], []
    for start in range(0, images.shape[0], batch_size):
        pool, logit = net(images[start : start + batch_size].to(device).contiguous())
        pools.append(pool.cpu())
        logits.append(logit.cpu())
    return {"pool": torch.cat(pools), "logits": torch.cat(logits)}


def inception_features(
    images_uint8: torch.Tensor | np.ndarray,
    weights_path: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The 2048-d pool3 features [N, 2048] that FID and KID use."""
    return inception_outputs(images_uint8, weights_path, batch_size, device)["pool"]


def fid_from_features(features: torch.Tensor | np.ndarray, ref, method: str = "sqrtm") -> float:
    """FID of ``features`` [N, 2048] against ``ref``: an ``.npz`` path with ``mu``/``sigma`` or a (mu, sigma) pair.

    ``method``: "sqrtm" as NVlabs/edm, or "eigh", the same value from symmetric eigensolves, which for fewer
    images than feature dimensions takes only an N×N one (:func:`frechet_distance_to_features`).
    """
    mu_ref, sigma_ref = load_statistics(ref) if isinstance(ref, (str, os.PathLike)) else ref
    return frechet_distance_to_statistics(features, mu_ref, sigma_ref, method=method)


def kid_from_features(
    features: torch.Tensor, ref_features: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 2020
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean ± std over ``subsets`` of unbiased MMD² with the cubic kernel
    k(x, y) = (xᵀy/D + 1)³, computed by torch-fidelity; subsets shrink to the smaller set when needed."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, len(features), len(ref_features))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(features)} and {len(ref_features)}")
    out = kid_features_to_metric(
        torch.as_tensor(features).double(),
        torch.as_tensor(ref_features).double(),
        kid_subsets=subsets,
        kid_subset_size=size,
        rng_seed=seed,
        verbose=False,
    )
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def inception_score_from_logits(logits: torch.Tensor, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """IS (Salimans et al. 2016) = exp(E_x KL(p(y|x) ‖ p(y))), mean ± std over ``splits``, by torch-fidelity."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    if len(logits) < splits:
        raise ValueError(f"Inception Score with {splits} splits needs ≥ {splits} images, got {len(logits)}")
    out = isc_features_to_metric(torch.as_tensor(logits), splits=splits, shuffle=True, rng_seed=seed)
    return out["inception_score_mean"], out["inception_score_std"]


