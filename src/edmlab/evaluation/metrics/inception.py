"""Inception-v3 metrics through torch-fidelity: FID (2048-d ``pool3`` features), KID and Inception Score.

torch-fidelity's ``FeatureExtractorInceptionV3`` is the TF ``inception-2015-12-05`` graph that NVlabs/edm and
StyleGAN use: uint8 RGB in, bilinear resize to 299×299 the TF1 way, (x − 128)/128 inside. Grayscale is tiled to
three channels (NVlabs/edm ``fid.py``). Float images in [−1, 1] become uint8 by ``edmlab.infra.images.to_uint8``.

Weights: ``weights_path`` (torch-fidelity's ``feature_extractor_weights_path``), otherwise torch.hub's cache
``<TORCH_HOME>/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``, otherwise a download into that cache
when the network answers. Offline with neither, :class:`InceptionWeightsError` says which file to put where.
A given or cached file is checked before torch-fidelity reads it (:func:`verify_weights`): under torch-fidelity's
published name, its SHA-256 must start with the hash in that name, as torch.hub checks a download
(``torch.hub.HASH_REGEX``); under any name, it must hold exactly torch-fidelity's state-dict keys and shapes.
"""
import functools
import hashlib
import os
import socket
import tempfile
import threading
import urllib.parse
import urllib.request

import numpy as np
import torch

from edmlab.evaluation.metrics.frechet import feature_statistics, frechet_distance_to_statistics, load_statistics

FEATURE_POOL = "2048"
FEATURE_LOGITS = "logits_unbiased"
NETWORK_PROBE_TIMEOUT_S = 3.0

MAX_CACHED_EXTRACTORS = 2

_EXTRACTORS: dict[tuple[str | None, str], torch.nn.Module] = {}


class InceptionWeightsError(FileNotFoundError):
    """The Inception-v3 weights are neither at the given path, nor in torch.hub's cache, nor downloadable."""


class InceptionWeightsMismatchError(ValueError):
    """A weights file that is not torch-fidelity's Inception-v3: wrong checksum, not a state dict, or wrong layout."""


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


def expected_sha256_prefix() -> str:
    """The start of the weights' SHA-256 as torch.hub reads it from the file name: ``6726825d`` (``-<hex>.``)."""
    match = torch.hub.HASH_REGEX.search(weights_file())
    if match is None or not match.group(1):
        raise RuntimeError(f"torch-fidelity's weights file name {weights_file()!r} carries no hash to check")
    return match.group(1)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unloaded_extractor(features: tuple[str, ...] = (FEATURE_POOL,)):
    """torch-fidelity's InceptionV3 with its initial (random) parameters: no weights file is read or downloaded."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return super().load_state_dict(state_dict, strict=False, assign=assign)

    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(tmp, "empty.pth")
        torch.save({}, empty)
        return _Unloaded("inception-v3-compat", list(features), feature_extractor_weights_path=empty)


@functools.lru_cache(maxsize=1)
def expected_layout() -> dict[str, tuple[int, ...]]:
    """{key: shape} of the state dict torch-fidelity's InceptionV3 ("inception-v3-compat") loads."""
    return {key: tuple(value.shape) for key, value in _unloaded_extractor().state_dict().items()}


def _shape(shape) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _first(names, count: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:count]) + (", …" if len(names) > count else "")


_VERIFIED: set[tuple[str, int, int]] = set()


def verify_weights(path: str | os.PathLike) -> str:
    """``path`` after checking that it holds torch-fidelity's Inception-v3 weights; else a one-line
    :class:`InceptionWeightsMismatchError` naming the file, what was expected, what was found and the fix.

    1. Checksum, as torch.hub checks a download: a file under torch-fidelity's name ``weights-inception-2015-12-05-
       6726825d.pth`` must have a SHA-256 starting with ``6726825d`` (the hash in the name, ``torch.hub.HASH_REGEX``).
       Files under other names (own or test weights) skip this step.
    2. Layout: read with ``torch.load(weights_only=True)`` (no pickled code runs), the file must be a dict of tensors
       with exactly the keys and shapes of torch-fidelity's InceptionV3 state dict (:func:`expected_layout`).
    The result is remembered per file (path, size, modification time)."""
    path = os.path.expanduser(os.fspath(path))
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return path
    fix = f"download '{weights_file()}' again from {weights_url()} and pass its path as weights_path"
    if os.path.basename(path) == weights_file():
        prefix, digest = expected_sha256_prefix(), file_sha256(path)
        if not digest.startswith(prefix):
            raise InceptionWeightsMismatchError(
                f"{path}: SHA-256 {digest} does not start with {prefix}, the checksum in torch-fidelity's file name "
                f"(the file is truncated, corrupt or not torch-fidelity's); {fix}"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on a file that is not a state dict
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InceptionWeightsMismatchError(
            f"{path}: not a state dict that torch.load(weights_only=True) reads ({type(e).__name__}: {reason[:200]}); "
            f"expected torch-fidelity's Inception-v3 weights; {fix}"
        ) from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        found = type(state).__name__ if not isinstance(state, dict) else "a dict with non-tensor values"
        raise InceptionWeightsMismatchError(
            f"{path}: holds {found}, expected torch-fidelity's Inception-v3 state dict (tensors by name); {fix}"
        )
    expected = expected_layout()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its {len(expected)} keys missing ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} wrong shapes ({k}: {_shape(state[k].shape)}, expected {_shape(expected[k])})")
        raise InceptionWeightsMismatchError(
            f"{path}: not torch-fidelity's Inception-v3 weights: {'; '.join(parts)}; {fix}"
        )
    _VERIFIED.add(key)
    return path


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
    """The weights file to load, checked by :func:`verify_weights`: ``weights_path``, else torch.hub's cached file,
    else a download into that cache (:func:`download_weights`) when the network answers."""
    if weights_path is not None:
        weights_path = os.path.expanduser(os.fspath(weights_path))
        if not os.path.isfile(weights_path):
            raise InceptionWeightsError(_missing_weights_message(f"weights_path={weights_path!r} does not exist"))
        return verify_weights(weights_path)
    cached = cached_weights_path()
    if os.path.isfile(cached):
        return verify_weights(cached)
    if not _network_reachable(weights_url()):
        reason = f"{cached} is missing and the network is unreachable"
        raise InceptionWeightsError(_missing_weights_message(reason))
    return download_weights(cached)


def download_weights(dst: str) -> str:
    """Download the weights to ``dst`` as torch.hub does, with its SHA-256 prefix check (which torch-fidelity's own
    download, ``load_state_dict_from_url`` without ``check_hash``, skips), then :func:`verify_weights` the file."""
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    try:
        torch.hub.download_url_to_file(weights_url(), dst, hash_prefix=expected_sha256_prefix(), progress=False)
    except RuntimeError as e:  # torch.hub: 'invalid hash value (expected "<prefix>", got "<sha256>")'; nothing kept
        raise InceptionWeightsMismatchError(
            f"{weights_url()}: the download has an {e} and was not kept; try again, or download "
            f"'{weights_file()}' by hand and pass its path as weights_path"
        ) from None
    except OSError as e:
        raise InceptionWeightsError(_missing_weights_message(f"downloading {weights_url()} failed ({e})")) from None
    return verify_weights(dst)


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
        raise ValueError("FID needs ref_stats (an .npz from edmlab.evaluation.metrics.ref_stats, or (mu, sigma)) or ref_images")
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _unloaded_extractor()
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), os.fspath(path))
