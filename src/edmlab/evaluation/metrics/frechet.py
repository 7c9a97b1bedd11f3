"""Fréchet distance between Gaussians fitted to feature sets (Heusel et al. 2017, "GANs trained by a two
time-scale update rule", Eq. 6; the FID of NVlabs/edm ``fid.py``).

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2·(Σ₁Σ₂)^½)

μ, Σ are the mean and the unbiased (N − 1) covariance of the features, kept in float64. Statistics files are
``.npz`` archives with the arrays ``mu`` [D] and ``sigma`` [D, D], the layout of NVlabs/edm's reference files, or
NVlabs/edm2's dataset-refs pickles (``img64.pkl``, ``img512.pkl``: ``{'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu',
'sigma'}, 'num_images': N}``, ``calculate_metrics.py`` ``save_stats``), read by a restricted unpickler that builds
numpy arrays and plain containers only.
"""
import os
import pickle
import warnings

import numpy as np
import scipy.linalg
import torch

SQRTM_EPS = 1e-6
SQRTM_MAX_REL_ERROR = 1e-3


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean μ [D] and unbiased covariance Σ = Σᵢ(xᵢ − μ)(xᵢ − μ)ᵀ / (N − 1) [D, D] of ``features`` [N, D], float64."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array [N, D], got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"the covariance needs at least 2 feature vectors, got N={x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf; check the images or the feature network")
    mu = x.mean(axis=0)
    centered = x - mu
    sigma = centered.T @ centered / (x.shape[0] - 1)
    return mu, sigma


def _sqrtm_trace(a: np.ndarray) -> float | None:
    """Tr(A^½) from scipy's Schur-based sqrtm (real part); None when the result is not finite or inaccurate."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # the accuracy is checked below instead
        root = scipy.linalg.sqrtm(a)
    if not np.isfinite(root).all():
        return None
    rel_error = np.linalg.norm(root @ root - a) / max(np.linalg.norm(a), np.finfo(np.float64).tiny)
    if rel_error > SQRTM_MAX_REL_ERROR:
        return None
    return float(np.trace(root).real)


def _eigh_trace(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(Λ^½ VᵀΣ₂V Λ^½) with Σ₁ = VΛVᵀ: Σ₁Σ₂ is similar to that PSD matrix, so symmetric
    eigensolves suffice, and only the numerically non-zero part of Λ (rank r) enters: O(D³) for one eigh + O(D²r)."""

    def positive(w: np.ndarray) -> np.ndarray:
        return w > w.max(initial=0.0) * len(w) * np.finfo(np.float64).eps

    w, v = np.linalg.eigh(sigma1)
    keep = positive(w)
    root_w = np.sqrt(w[keep])
    inner = (v[:, keep].T @ sigma2 @ v[:, keep]) * root_w[:, None] * root_w[None, :]
    lam = np.linalg.eigvalsh(inner)
    return float(np.sqrt(lam[positive(lam)]).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = SQRTM_EPS, method: str = "sqrtm") -> float:
    """d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2·sqrtm(Σ₁Σ₂)) (Heusel et al. 2017, Eq. 6).

    ``method="sqrtm"`` (default) is NVlabs/edm's: scipy's Schur-based sqrtm, real part. When it fails on a
    near-singular product, the whole distance is taken between the regularised Gaussians with Σ + εI (so that
    identical statistics still give 0), with a warning. ``method="eigh"`` gives the same trace from symmetric
    eigensolves (:func:`_eigh_trace`), faster than the Schur-based sqrtm at D = 2048 and needing no
    regularisation; the two agree to rounding.
    """
    if method not in ("sqrtm", "eigh"):
        raise ValueError(f"method must be 'sqrtm' (NVlabs/edm) or 'eigh', got {method!r}")
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"statistics do not match: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, sigma2 {sigma2.shape}; "
            "both sets need mu [D] and sigma [D, D] from the same feature network"
        )
    diff = mu1 - mu2
    tr_covmean = _sqrtm_trace(sigma1 @ sigma2) if method == "sqrtm" else _eigh_trace(sigma1, sigma2)
    if tr_covmean is None:
        warnings.warn(f"sqrtm(Σ1·Σ2) is singular or inaccurate; adding {eps:g}·I to both covariances", RuntimeWarning)
        sigma1, sigma2 = sigma1 + eps * np.eye(d), sigma2 + eps * np.eye(d)
        tr_covmean = _sqrtm_trace(sigma1 @ sigma2)
        if tr_covmean is None:
            raise FloatingPointError("sqrtm(Σ1·Σ2) failed even after regularisation; the covariances are degenerate")
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_to_features(features: torch.Tensor | np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """d² between the Gaussian fitted to ``features`` [N, D] and N(μ, Σ), for N ≤ D, from an N×N eigensolve.

    With A the centred features, Σ_f = AᵀA/(N−1) and Tr((Σ_f Σ)^½) = Σᵢ √λᵢ(A Σ Aᵀ/(N−1)), since Σ_f Σ and
    AΣAᵀ/(N−1) share their non-zero eigenvalues. Exact, like ``frechet_distance(..., method="eigh")``, but
    O(N·D² + N³): a few-thousand-image FID during training costs seconds instead of a D×D decomposition.
    """
    mu_f, sigma_f = feature_statistics(features)
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.shape != mu_f.shape or sigma.shape != sigma_f.shape:
        raise ValueError(f"features have D={mu_f.shape[0]} but the statistics are mu {mu.shape}, sigma {sigma.shape}")
    x = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, float)
    a = x - mu_f
    lam = np.linalg.eigvalsh(a @ sigma @ a.T / (len(a) - 1))
    tr_covmean = np.sqrt(lam[lam > lam.max(initial=0.0) * len(lam) * np.finfo(np.float64).eps]).sum()
    diff = mu_f - mu
    return float(diff @ diff + np.trace(sigma_f) + np.trace(sigma) - 2.0 * tr_covmean)


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write ``mu`` [D] and ``sigma`` [D, D] as float64 arrays into the ``.npz`` at ``path``."""
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma)


def frechet_distance_to_statistics(features: torch.Tensor | np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray,
                                   method: str = "sqrtm") -> float:
    """d² between the Gaussian fitted to ``features`` [N, D] and N(μ_ref, Σ_ref): :func:`frechet_distance` of their
    statistics, or for ``method="eigh"`` and N ≤ D the N×N eigensolve of :func:`frechet_distance_to_features`."""
    if method == "eigh" and len(features) <= np.shape(mu_ref)[0]:
        return frechet_distance_to_features(features, mu_ref, sigma_ref)
    return frechet_distance(*feature_statistics(features), mu_ref, sigma_ref, method=method)


def save_statistics_pickle(path: str | os.PathLike, stats: dict, num_images: int) -> None:
    """Write ``{metric: (mu, sigma)}`` as NVlabs/edm2's statistics pickle: ``{'num_images': N, metric: {'mu': mu,
    'sigma': sigma}, ...}`` (float64 arrays; pickle protocol 4, plain dicts, so :func:`load_statistics` and
    edm2's ``calculate_metrics.py --ref`` both read it)."""
    entries = {}
    for metric, (mu, sigma) in stats.items():
        mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{metric}: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
        entries[metric] = {"mu": mu, "sigma": sigma}
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"num_images": int(num_images), **entries}, f, protocol=4)


def _numpy_globals() -> dict:
    """The globals a pickle of numpy arrays names: numpy's array/dtype/scalar rebuilders (protocol ≤ 4) and
    ``_frombuffer`` (protocol 5), under numpy 1's and numpy 2's module names."""
    from numpy._core import numeric

    from edmlab.io.nvlabs.unpickler import ALLOWED

    allowed = {key: value for key, value in ALLOWED.items() if key[0] in ("numpy", "numpy.core.multiarray",
                                                                         "numpy._core.multiarray")}
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    return allowed


def read_statistics_pickle(path: str) -> object:
    """The object of an NVlabs/edm2 reference-statistics pickle, unpickled with numpy's array globals only: any
    other global is refused (an ``UnsafePickleError`` naming it and the file) before anything of it runs."""
    from edmlab.io.nvlabs.unpickler import RestrictedUnpickler, UnsafePickleError

    allowed = _numpy_globals()

    class StatisticsUnpickler(RestrictedUnpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in allowed:
                return allowed[(module, name)]
            raise UnsafePickleError(f"refused global {module}.{name}; reference statistics hold numpy arrays only, "
                                    f"so nothing of this file is run or loaded")

    with open(path, "rb") as f:
        try:
            return StatisticsUnpickler(f).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                MemoryError, OverflowError, UnicodeDecodeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path}: truncated or corrupt statistics pickle ({type(e).__name__}: {reason}); "
                             f"download NVlabs/edm2's dataset-refs file again") from None


def _statistics_from_pickle(path: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    stats = read_statistics_pickle(path)
    if not isinstance(stats, dict):
        raise ValueError(f"{path} holds a {type(stats).__name__}, but an NVlabs/edm2 statistics pickle is a dict "
                         f"{{'fid': {{mu, sigma}}, 'fd_dinov2': {{mu, sigma}}}}")
    if metric not in stats:
        metrics = sorted(k for k, v in stats.items() if isinstance(v, dict))
        raise ValueError(f"{path} holds statistics for {metrics} but not {metric!r}; use a reference file made "
                         f"for {metric} (NVlabs/edm2 dataset-refs hold 'fid' and 'fd_dinov2')")
    entry = stats[metric]
    if not isinstance(entry, dict) or not {"mu", "sigma"} <= set(entry) or not all(
            isinstance(entry[k], np.ndarray) and np.issubdtype(entry[k].dtype, np.number) for k in ("mu", "sigma")):
        raise ValueError(f"{path}: its {metric!r} entry is not {{'mu': array, 'sigma': array}}")
    return entry["mu"].astype(np.float64), entry["sigma"].astype(np.float64)


def load_statistics(path: str | os.PathLike, metric: str = "fid") -> tuple[np.ndarray, np.ndarray]:
    """Read ``mu``, ``sigma`` (float64) from an ``.npz`` of :func:`save_statistics` or NVlabs/edm ``fid.py ref``,
    or the ``metric`` entry (``fid``, ``fd_dinov2``) of an NVlabs/edm2 statistics pickle (told apart by content:
    a ZIP archive or a pickle)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"reference statistics {path!r} not found; compute them with "
            f"`python -m edmlab.cli.ref_stats --data <dataset> --dest {path}` or download NVlabs/edm's npz "
            f"(FID) or NVlabs/edm2's dataset-refs .pkl (FID and FD-DINOv2)"
        )
    with open(path, "rb") as f:
        is_pickle = f.read(1) == pickle.PROTO
    if is_pickle:
        mu, sigma = _statistics_from_pickle(path, metric)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path!r}: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
        return mu, sigma
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path!r} is not a readable .npz statistics file ({e}); recreate it") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} is a single .npy array, but reference statistics are an .npz with 'mu' and 'sigma'")
    with data:
        if not {"mu", "sigma"} <= set(data.files):
            raise ValueError(
                f"{path!r} holds arrays {sorted(data.files)}, but reference statistics need 'mu' and 'sigma'; "
                "recreate it with `python -m edmlab.cli.ref_stats`"
            )
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path!r}: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    return mu, sigma
