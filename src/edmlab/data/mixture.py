"""A Gaussian mixture whose diffused densities, denoiser and probability-flow ODE are known exactly: the test
bench that measures any sampler's error.

p(x; σ) = Σ_k w_k·N(x; μ_k, diag(s_k² + σ²)), so the ideal denoiser (posterior mean, EDM Eq. 3) is
D(x; σ) = Σ_k r_k(x; σ)·[μ_k + s_k²/(s_k² + σ²)·(x − μ_k)],  r_k ∝ w_k·N(x; μ_k, s_k² + σ²),
and the score is ∇ log p(x; σ) = (D(x; σ) − x)/σ² = −Σ_k r_k·(x − μ_k)/(s_k² + σ²).
"""
import math

import numpy as np
import torch


class GaussianMixture:
    """K components with means ``[K, D]``, standard deviations (scalar, ``[K]`` or ``[K, D]``, all > 0) and
    weights ``[K]`` (normalised; uniform when None). Everything is float64. The object is itself a denoiser:
    ``mixture(x, sigma)`` is D(x; σ), usable with ``edmlab.sample``."""

    def __init__(self, means, stds, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim == 1:
            means = means[:, None]
        if means.ndim != 2:
            raise ValueError(f"means must have shape [K, D], got {tuple(means.shape)}")
        K, D = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        stds = stds[:, None] if stds.ndim == 1 else stds
        try:
            stds = torch.broadcast_to(stds, (K, D)).clone()
        except RuntimeError:
            raise ValueError(f"stds of shape {tuple(stds.shape)} do not fit means of shape {(K, D)}") from None
        if not bool((stds > 0).all()):
            raise ValueError("every std must be > 0 (a smooth mixture); use a small std for a near-point mass")
        weights = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or not bool((weights >= 0).all()) or not weights.sum() > 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum, got {weights.tolist()}")
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()
        self.sigma_min, self.sigma_max = 0.0, math.inf

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _variance(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        sigma = sigma.reshape(-1, 1, 1) if sigma.ndim else sigma
        return self.stds**2 + sigma**2  # [B or 1, K, D]

    def _log_joint(self, x, sigma, class_labels=None):
        """log w_k + log N(x; μ_k, s_k² + σ²): ``[B, K]``."""
        x = torch.as_tensor(x, dtype=torch.float64)
        var = self._variance(sigma)
        diff = x[:, None, :] - self.means
        log_w = self.weights.log()
        if class_labels is not None:
            log_w = torch.as_tensor(class_labels, dtype=torch.float64).log()
        return log_w - 0.5 * (diff**2 / var + (2 * math.pi * var).log()).sum(-1)

    def log_prob(self, x, sigma=0.0) -> torch.Tensor:
        """log p(x; σ) for x ``[B, D]``."""
        return self._log_joint(x, sigma).logsumexp(-1)

    def responsibilities(self, x, sigma, class_labels=None) -> torch.Tensor:
        return self._log_joint(x, sigma, class_labels).softmax(-1)

    def denoise(self, x, sigma, class_labels=None) -> torch.Tensor:
        """D(x; σ) = E[y | y + σn = x]; one-hot ``class_labels`` [B, K] condition on a component."""
        x64 = torch.as_tensor(x, dtype=torch.float64)
        var = self._variance(sigma)
        r = self.responsibilities(x64, sigma, class_labels)
        posterior_means = self.means + self.stds**2 / var * (x64[:, None, :] - self.means)
        return (r[..., None] * posterior_means).sum(1).to(x.dtype if isinstance(x, torch.Tensor) else torch.float64)

    __call__ = denoise

    def score(self, x, sigma) -> torch.Tensor:
        """∇_x log p(x; σ), finite at σ = 0."""
        x = torch.as_tensor(x, dtype=torch.float64)
        var = self._variance(sigma)
        r = self.responsibilities(x, sigma)
        return -(r[..., None] * (x[:, None, :] - self.means) / var).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None, sigma: float = 0.0,
               return_components: bool = False):
        """n draws from p(x; σ) (float64 ``[n, D]``), optionally with their component indices."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + (self.stds[k] ** 2 + sigma**2).sqrt() * noise
        return (x, k) if return_components else x

    def ode_solution(self, x, sigma_max: float, sigma_min: float = 0.0, rtol: float = 1e-11,
                     atol: float = 1e-11) -> torch.Tensor:
        """The exact endpoint of the probability-flow ODE dx/dσ = −σ·∇log p(x; σ) (EDM Eq. 1 with σ(t) = t)
        from x at σ_max down to σ_min, by an 8th-order adaptive Runge–Kutta (DOP853) in float64."""
        from scipy.integrate import solve_ivp

        x = torch.as_tensor(x, dtype=torch.float64)
        shape = x.shape

        def rhs(sigma, flat):
            y = torch.from_numpy(flat).reshape(shape)
            return (-sigma * self.score(y, sigma)).reshape(-1).numpy()

        result = solve_ivp(rhs, (float(sigma_max), float(sigma_min)), x.reshape(-1).numpy().copy(), method="DOP853",
                           rtol=rtol, atol=atol)
        if not result.success:
            raise RuntimeError(f"reference ODE solve failed: {result.message}")
        return torch.from_numpy(np.ascontiguousarray(result.y[:, -1])).reshape(shape)

    def __repr__(self):
        return f"GaussianMixture(K={self.num_components}, D={self.dim})"
