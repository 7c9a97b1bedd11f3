"""Sample-based distances to a known distribution (toy mixtures, low-dimensional data).

- Sliced Wasserstein (Rabin et al. 2011; Bonneel et al. 2015):
  SW_p(x, y) = ( E_θ~U(S^{D−1}) W_p^p(θᵀx, θᵀy) )^{1/p}, the expectation estimated with random directions and
  each 1-D W_p^p = ∫₀¹ |F⁻¹(t) − G⁻¹(t)|^p dt computed exactly between the two empirical quantile functions.
- MMD (Gretton et al. 2012, Eq. 3, unbiased MMD²_u) with the Gaussian kernel mix
  k(a, b) = (1/H) Σ_h exp(−‖a − b‖² / (2h²)) over the bandwidths h.
"""
import torch

DEFAULT_BANDWIDTHS = (0.1, 0.3, 1.0, 3.0)


def _as_points(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name} must be samples [N ≥ 2, D] (or [N] in 1-D), got shape {tuple(x.shape)}")
    return x.double()


def _check_pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension D, got {x.shape[1]} and {y.shape[1]}")
    return x, y.to(x.device)


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """W_p^p between the empirical measures of the columns of ``u`` [N, P] and ``v`` [M, P] → [P].

    The quantile functions are step functions with jumps at i/N and j/M; on each piece of the merged grid
    both are constant, so the integral ∫₀¹ |F⁻¹ − G⁻¹|^p dt is an exact finite sum.
    """
    n, m = len(u), len(v)
    u, v = u.sort(dim=0).values, v.sort(dim=0).values
    grid = dict(dtype=torch.float64, device=u.device)
    levels = torch.cat([torch.arange(1, n + 1, **grid) / n, torch.arange(1, m + 1, **grid) / m]).sort().values
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - widths / 2
    iu = (mid * n).long().clamp(max=n - 1)
    iv = (mid * m).long().clamp(max=m - 1)
    return (widths[:, None] * (u[iu] - v[iv]).abs() ** p).sum(dim=0)


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    num_projections: int = 256,
    p: float = 2.0,
    generator: torch.Generator | None = None,
) -> float:
    """SW_p(x, y) = (mean_θ W_p^p(θᵀx, θᵀy))^{1/p} over ``num_projections`` uniform directions θ ∈ S^{D−1}.

    In 1-D the only directions are ±1, so SW_p is the exact W_p.
    """
    x, y = _check_pair(x, y)
    if num_projections < 1:
        raise ValueError(f"num_projections must be ≥ 1, got {num_projections}")
    if x.shape[1] == 1:
        theta = torch.ones(1, 1, dtype=x.dtype, device=x.device)
    else:
        theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=x.dtype)
        theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    return wasserstein_1d(x @ theta, y @ theta, p).mean().pow(1.0 / p).item()


def gaussian_kernel_mix(a: torch.Tensor, b: torch.Tensor, bandwidths=DEFAULT_BANDWIDTHS) -> torch.Tensor:
    """k(a, b) = (1/H) Σ_h exp(−‖a − b‖² / (2h²)), [N, M]."""
    sq = torch.cdist(a, b).pow(2)
    return torch.stack([torch.exp(-sq / (2.0 * h * h)) for h in bandwidths]).mean(dim=0)


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths=DEFAULT_BANDWIDTHS) -> float:
    """Unbiased MMD²_u (Gretton et al. 2012, Eq. 3):

    1/(m(m−1)) Σ_{i≠j} k(xᵢ, xⱼ) + 1/(n(n−1)) Σ_{i≠j} k(yᵢ, yⱼ) − 2/(mn) Σ_{i,j} k(xᵢ, yⱼ).

    Its expectation is MMD² ≥ 0; an estimate may be slightly negative when the distributions agree.
    """
    x, y = _check_pair(x, y)
    bandwidths = tuple(float(h) for h in bandwidths)
    if not bandwidths or min(bandwidths) <= 0:
        raise ValueError(f"bandwidths must be a non-empty list of positive numbers, got {bandwidths}")
    m, n = len(x), len(y)
    kxx, kyy, kxy = (gaussian_kernel_mix(a, b, bandwidths) for a, b in ((x, x), (y, y), (x, y)))
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return (xx + yy - 2.0 * kxy.mean()).item()
