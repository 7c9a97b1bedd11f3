"""Inception-v3 metrics through torch-fidelity: FID (2048-d ``pool3`` features), KID and Inception Score.

torch-fidelity's ``FeatureExtractorInceptionV3`` is the TF ``inception-2015-12-05`` graph that NVlabs/edm and
StyleGAN use: uint8 RGB in, bilinear resize to 299×299 the TF1 way, (x − 128)/128 inside. Grayscale is tiled to
three channels (NVlabs/edm ``fid.py``). Float images in [−1, 1] become uint8 by ``edmlab.images.to_uint8``.

Weights: ``weights_path`` (torch-fidelity's ``feature_extractor_weights_path``), otherwise torch.hub's cache
``<TORCH_HOME>/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``, otherwise a download by torch-fidelity
when the network answers. Offline with neither, :class:`InceptionWeightsError` says which file to put where.
"""
import os
import socket
import tempfile
import threading
import urllib.parse
import urllib.request

import numpy as np
import torch

from edmlab.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_to_features, load_statistics

FEATURE_POOL = "2048"
FEATURE_LOGITS = "logits_unbiased"
NETWORK_PROBE_TIMEOUT_S = 3.0

MAX_CACHED_EXTRACTORS = 2

_EXTRACTORS: dict[tuple[str | None, str], torch.nn.Module] = {}


class InceptionWeightsError(FileNotFoundError):
    """The Inception-v3 weights are neither at the given path, nor in torch.hub's cache, nor downloadable."""


def weights_url() -> str:
    """The URL torch-fidelity downloads its Inception-v3 weights from (torch-fidelity is imported lazily: ~2 s)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def weights_file() -> str:
    """The weights' file name, ``weights-inception-2015-12-05-6726825d.pth`` in torch-fidelity 0.3–0.4."""
    return os.path.basename(urllib.parse.urlparse(weights_url()).path)


def cached_weights_path() -> str:
    """Where torch.hub (hence torch-fidelity) keeps the downloaded weights: ``<hub dir>/checkpoints/<file>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", weights_file())


def _missing_weights_message(reason: str) -> str:
    return (
        f"{reason}. FID/KID/IS need torch-fidelity's Inception-v3 weights '{weights_file()}' "
        f"(download: {weights_url()}). Either put the file at {cached_weights_path()} "
        f"(torch.hub's cache; set TORCH_HOME to move it) or pass weights_path=/path/to/{weights_file()} "
        "(ref_stats CLI: --weights)."
    )


def _network_reachable(url: str, timeout: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host (or the configured HTTPS proxy) opens within ``timeout``.

    The probe runs in a daemon thread so that a hanging DNS lookup stalls neither the caller nor the exit.
    """
    target = urllib.request.getproxies().get(urllib.parse.urlparse(url).scheme) or url
    parts = urllib.parse.urlparse(target if "//" in target else f"//{target}")
    host, port = parts.hostname, parts.port or (443 if parts.scheme in ("https", "") else 80)

    result = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, name="edmlab-network-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(result)


def resolve_weights(weights_path: str | os.PathLike | None = None) -> str | None:
    """The weights file to load, or None when torch-fidelity may download it (not cached, network answers)."""
    if weights_path is not None:
        weights_path = os.path.expanduser(os.fspath(weights_path))
        if not os.path.isfile(weights_path):
            raise InceptionWeightsError(_missing_weights_message(f"weights_path={weights_path!r} does not exist"))
        return weights_path
    cached = cached_weights_path()
    if os.path.isfile(cached):
        return cached
    if not _network_reachable(weights_url()):
        reason = f"{cached} is missing and the network is unreachable"
        raise InceptionWeightsError(_missing_weights_message(reason))
    return None


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


def _as_rgb_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype != torch.uint8:
        raise TypeError(
            f"Inception input must be uint8 [N, C, H, W], got {images.dtype}; "
            "convert images in [-1, 1] with edmlab.images.to_uint8"
        )
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Inception input must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
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
    if method == "eigh" and len(features) <= np.shape(mu_ref)[0]:
        return frechet_distance_to_features(features, mu_ref, sigma_ref)
    mu, sigma = feature_statistics(features)
    return frechet_distance(mu, sigma, mu_ref, sigma_ref, method=method)


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


def inception_metrics(
    images_uint8: torch.Tensor | np.ndarray,
    ref_stats=None,
    ref_images: torch.Tensor | np.ndarray | None = None,
    metrics: tuple[str, ...] = ("fid",),
    weights_path: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    isc_splits: int = 10,
    fid_method: str = "sqrtm",
) -> dict[str, float]:
    """Any of ``fid`` (vs ``ref_stats`` npz/(mu, sigma), or ``ref_images``), ``kid`` (vs ``ref_images``), ``is``."""
    unknown = set(metrics) - {"fid", "kid", "is"}
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from 'fid', 'kid', 'is'")
    if "kid" in metrics and ref_images is None:
        raise ValueError("KID compares two image sets: pass ref_images (uint8 [N, C, H, W])")
    if "fid" in metrics and ref_stats is None and ref_images is None:
        raise ValueError("FID needs ref_stats (an .npz from edmlab.metrics.ref_stats, or (mu, sigma)) or ref_images")
    out = inception_outputs(images_uint8, weights_path, batch_size, device)
    ref_pool = None
    if ref_images is not None and ("kid" in metrics or ref_stats is None):
        ref_pool = inception_features(ref_images, weights_path, batch_size, device)
    result = {}
    if "fid" in metrics:
        ref = ref_stats if ref_stats is not None else feature_statistics(ref_pool)
        result["fid"] = fid_from_features(out["pool"], ref, fid_method)
    if "kid" in metrics:
        result["kid_mean"], result["kid_std"] = kid_from_features(out["pool"], ref_pool, kid_subsets, kid_subset_size)
    if "is" in metrics:
        result["is_mean"], result["is_std"] = inception_score_from_logits(out["logits"], isc_splits)
    return result


def write_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> None:
    """Save a randomly initialised state_dict with the exact layout torch-fidelity's InceptionV3 loads.

    For offline tests of the pipeline: convolutions get Kaiming-normal (ReLU gain) weights so that activations
    neither vanish nor explode through the 90-odd layers; batch norms keep identity statistics.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _RandomInitInceptionV3(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return super().load_state_dict(state_dict, strict=False, assign=assign)

    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(tmp, "empty.pth")
        torch.save({}, empty)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _RandomInitInceptionV3("inception-v3-compat", [FEATURE_POOL], feature_extractor_weights_path=empty)
            for module in net.modules():
                if isinstance(module, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), os.fspath(path))
