"""The Inception-v3 weights torch-fidelity reads, found, checked and (where a network answers) downloaded.

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

import torch

FEATURE_POOL = "2048"
_VERIFIED: set[tuple[str, int, int]] = set()


NETWORK_PROBE_TIMEOUT_S = 3.0


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
