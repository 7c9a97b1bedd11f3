"""The log-likelihood of data under a denoiser, through EDM's probability-flow ODE (Song et al. 2021, "Score-based
generative modeling through stochastic differential equations", Sec. 4.3 and App. D.2).

In u = log σ, EDM's ODE dx/dσ = (x − D(x; σ))/σ (Eq. 1/4 with σ(t) = t) is dx/du = f(x, u) = x − D(x; e^u), and it
carries the density p(·; σ) of the data diffused to σ along x(u) (the instantaneous change of variables, Chen et al.
2018): d log p(x(u); e^u)/du = −div f. Integrated from σ_min (data) up to σ_max (noise),

    log p(x; σ_min) = log p(x(σ_max); σ_max) + ∫_{log σ_min}^{log σ_max} div f(x(u), u) du,
    div f = d − tr ∂D/∂x   (d = the number of entries of one sample).

The divergence is exact (d vector–Jacobian products per call: points) or Hutchinson's estimate
div f ≈ (1/K)·Σ_k v_kᵀ (∂f/∂x) v_k with K probes v_k drawn once per sample and held fixed along the path (FFJORD,
Grathwohl et al. 2019; one VJP per probe): the path does not depend on the probes, so for E[v vᵀ] = I the
estimate of log p (not of p) is unbiased, with a variance 1/K of one probe's. Rademacher probes (vᵀv = d exactly)
have the smaller variance, 2·Σ_{i≠j} J_ij² against Gaussian probes' 2·‖J‖²_F per call.

The tail: p(·; σ_max) is taken to be N(0, σ_max² I), as k-diffusion's ``log_likelihood`` does; the data's own
mean μ and covariance are dropped. For z = x(σ_max) ≈ μ + σ_max·n that moves log p by ≈ μ·n/σ_max (per sample; its
mean over the data is O(‖μ‖²/σ_max²)) plus O(d·σ_data²/σ_max²): 1.4e-4 nats on the centred ring8, up to 1.2e-2 on
a 3-D mixture of mean norm 0.36 (docs/likelihood.md). ``ode_to_noise`` returns the two terms apart, so a known
p(·; σ_max) (``GaussianMixture.log_prob(z, sigma_max)``) can replace the Gaussian.

The solver is Dormand–Prince 5(4) with first-same-as-last (Dormand & Prince 1980; Hairer, Nørsett & Wanner I,
Table II.5.2), carrying (x, ∫div) together, each sample with its own step size, as ``edmlab.sample``'s
solver=adaptive does: only the samples still running are passed to the denoiser, so a sample's log p and its NFE do
not depend on its batch.
"""
import math
from dataclasses import dataclass

import torch

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
DEQUANTIZATIONS = ("uniform", "none")
MAX_STEPS = 10_000
H_INIT = 0.1  # the first trial step in log σ

# Dormand–Prince 5(4): nodes c, stages a (the last row is the 5th-order weights b, so its stage is the next step's
# first: FSAL), and e = b − b̂, the difference to the embedded 4th-order weights b̂.
DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DP_A = ((),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


@dataclass
class FlowToNoise:
    """What the ODE gives for each sample: x(σ_max) (``latent``, float64), the integral ∫ div f du (``integral``,
    float64 [N]) and the denoiser calls it took (``nfe``, int64 [N])."""

    latent: torch.Tensor
    integral: torch.Tensor
    nfe: torch.Tensor


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}: choose one of {', '.join(map(repr, choices))}")
    return value


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
    return float(value)


def check_count(name: str, value, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {name}={value!r}")
    return value


def check_sigma_range(sigma_min, sigma_max, denoiser) -> tuple[float, float]:
    """0 < σ_min < σ_max < ∞, inside the denoiser's supported range (its ``sigma_min``/``sigma_max``, if any)."""
    lo, hi = check_positive("sigma_min", sigma_min), check_positive("sigma_max", sigma_max)
    if not lo < hi:
        raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    supported_lo = float(getattr(denoiser, "sigma_min", 0.0))
    supported_hi = float(getattr(denoiser, "sigma_max", math.inf))
    if lo < supported_lo:
        raise ValueError(f"sigma_min={sigma_min} is below the denoiser's smallest noise level {supported_lo:.6g} "
                         f"(its sigma_min): use sigma_min >= {supported_lo:.6g}")
    if hi > supported_hi:
        raise ValueError(f"sigma_max={sigma_max} is above the denoiser's largest noise level {supported_hi:.6g} "
                         f"(its sigma_max): use sigma_max <= {supported_hi:.6g}")
    return lo, hi


def draw_probes(x: torch.Tensor, probes: int, probe: str, generator=None) -> torch.Tensor:
    """K probes per sample, ``[K, *x.shape]`` float64 on x's device: Rademacher (±1) or standard normal entries,
    drawn from ``generator`` (on its own device)."""
    device = generator.device if generator is not None else x.device
    shape = (probes, *x.shape)
    if probe == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator, device=device).to(torch.float64) * 2 - 1
    else:
        v = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    return v.to(x.device)


class Divergence:
    """(f, div f) of f(x, u) = x − D(x; e^u) for the running rows, with tr ∂D/∂x exact (one VJP per entry) or by
    Hutchinson's probes (one VJP per probe); ``nfe`` counts each row's denoiser calls."""

    def __init__(self, denoiser, kind: str, probes: torch.Tensor | None, denoiser_kwargs: dict, batch: int, device):
        self.denoiser, self.kind, self.probes, self.kwargs = denoiser, kind, probes, denoiser_kwargs
        self.nfe = torch.zeros(batch, dtype=torch.int64, device=device)

    def __call__(self, x: torch.Tensor, u: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.nfe[rows] += 1
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            denoised = self.denoiser(x, u.exp(), **{k: v[rows] for k, v in self.kwargs.items()})
            if not (isinstance(denoised, torch.Tensor) and denoised.requires_grad):
                raise ValueError("the denoiser's output carries no gradient with respect to x: log_likelihood needs "
                                 "tr ∂D/∂x, so call it on a denoiser that runs with autograd (no torch.no_grad inside)")
            div = self.exact(x, denoised) if self.kind == "exact" else self.hutchinson(x, denoised, rows)
        return (x - denoised).detach().to(torch.float64), div

    @staticmethod
    def exact(x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """d − Σ_i ∂D_i/∂x_i: the i-th entry of the VJP with the i-th unit vector, for every entry i."""
        flat = denoised.flatten(1)
        trace = x.new_zeros(len(x))
        for i in range(flat.shape[1]):
            (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])
            trace += row.flatten(1)[:, i].to(torch.float64)
        return flat.shape[1] - trace

    def hutchinson(self, x: torch.Tensor, denoised: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(1/K)·Σ_k v_kᵀ (∂f/∂x) v_k = (1/K)·Σ_k (v_kᵀv_k − v_kᵀ (∂D/∂x) v_k) with the rows' fixed probes (for
        Rademacher probes v_kᵀv_k = d)."""
        probes = self.probes[:, rows]
        total = x.new_zeros(len(x))
        for k, v in enumerate(probes):
            (vjp,) = torch.autograd.grad(denoised, x, grad_outputs=v.to(denoised.dtype),
                                         retain_graph=k + 1 < len(probes))
            total += (v * (v - vjp.to(torch.float64))).flatten(1).sum(1)
        return total / len(probes)


def ode_to_noise(denoiser, x: torch.Tensor, *, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 divergence: str = "exact", probes: int = 1, probe: str = "rademacher", rtol: float = 1e-5,
                 atol: float = 1e-5, generator=None, class_labels=None) -> FlowToNoise:
    """Solve dx/du = x − D(x; e^u), dℓ/du = d − tr ∂D/∂x from u = log σ_min (x, ℓ = 0) to log σ_max, by
    Dormand–Prince 5(4) per sample: a step is accepted when max(‖e_x/(atol + rtol·max(|x|, |x₅|))‖_rms,
    |e_ℓ|/(atol + rtol·max(|ℓ|, |ℓ₅|))) ≤ 1 (e: the 5th − 4th-order difference), and the next step is
    h·clip(0.9·err^{−1/5}, 0.2, 5) (Hairer, Nørsett & Wanner I, Sec. II.4). Arguments as ``log_likelihood``."""
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("probe", probe, PROBES)
    check_count("probes", probes)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    lo, hi = check_sigma_range(sigma_min, sigma_max, denoiser)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2 or len(x) == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor [N, ...] of N >= 1 points or images, got {got}")
    if class_labels is not None and len(class_labels) != len(x):
        raise ValueError(f"class_labels has {len(class_labels)} rows for {len(x)} samples: give one per sample")
    x = x.detach().to(torch.float64).clone()
    batch, view = len(x), (-1,) + (1,) * (x.ndim - 1)
    field = Divergence(denoiser, divergence, draw_probes(x, probes, probe, generator) if divergence == "hutchinson"
                       else None, {} if class_labels is None else {"class_labels": class_labels}, batch, x.device)
    u_end = math.log(hi)
    ell = x.new_zeros(batch)
    u = x.new_full((batch,), math.log(lo))
    h = x.new_full((batch,), H_INIT)
    fx, fl = field(x, u, torch.arange(batch, device=x.device))
    for _ in range(MAX_STEPS):
        rows = (u < u_end).nonzero()[:, 0]
        if len(rows) == 0:
            break
        xs, ls, us = x[rows], ell[rows], u[rows]
        hs = torch.minimum(h[rows], u_end - us)
        hv = hs.view(view)
        kx, kl = [fx[rows]], [fl[rows]]
        for c, a in zip(DP_C[1:], DP_A[1:]):
            xi = xs + hv * sum(coef * k for coef, k in zip(a, kx))
            li = ls + hs * sum(coef * k for coef, k in zip(a, kl))
            stage = field(xi, us + c * hs if c < 1 else us + hs, rows)
            kx.append(stage[0])
            kl.append(stage[1])
        err_x = hv * sum(coef * k for coef, k in zip(DP_E, kx))
        err_l = hs * sum(coef * k for coef, k in zip(DP_E, kl))
        err = torch.maximum(
            (err_x / (atol + rtol * torch.maximum(xs.abs(), xi.abs()))).square().flatten(1).mean(1).sqrt(),
            err_l.abs() / (atol + rtol * torch.maximum(ls.abs(), li.abs())))
        accept = err <= 1
        keep = accept.view(view)
        factor = (0.9 * err.clamp(min=1e-10) ** (-1 / 5)).clamp(0.2, 5.0)
        x[rows] = torch.where(keep, xi, xs)
        ell[rows] = torch.where(accept, li, ls)
        fx[rows] = torch.where(keep, kx[-1], kx[0])
        fl[rows] = torch.where(accept, kl[-1], kl[0])
        u[rows] = torch.where(accept, torch.where(hs == u_end - us, u.new_full((), u_end), us + hs), us)
        h[rows] = hs * torch.where(accept, factor, factor.clamp(max=1.0))
    else:
        raise RuntimeError(f"log_likelihood: {MAX_STEPS} steps did not reach sigma_max; raise rtol={rtol} or "
                           f"atol={atol}")
    return FlowToNoise(x, ell, field.nfe)


def gaussian_log_prob(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(z; 0, σ² I) per sample: −‖z‖²/(2σ²) − (d/2)·log(2πσ²), float64 [N]."""
    z = z.to(torch.float64).flatten(1)
    return -0.5 * z.square().sum(1) / sigma**2 - 0.5 * z.shape[1] * math.log(2 * math.pi * sigma**2)


def log_likelihood(denoiser, x: torch.Tensor, *, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   divergence: str = "exact", probes: int = 1, probe: str = "rademacher", rtol: float = 1e-5,
                   atol: float = 1e-5, generator=None, class_labels=None) -> torch.Tensor:
    """log p(x; σ_min) in nats per sample (float64 [N]) of the density that ``denoiser``'s probability-flow ODE
    carries from N(0, σ_max² I) at σ_max (k-diffusion's prior) down to σ_min:
    log N(x(σ_max); 0, σ_max² I) + ∫ (d − tr ∂D/∂x) d log σ along the ODE from x (this module's docstring).

    ``denoiser(x, sigma, class_labels=...)`` as for ``edmlab.sample`` (an ``edmlab.load`` network or a
    ``GaussianMixture``), differentiable in x; its ``sigma_min``/``sigma_max`` bound the range. ``x``: [N, ...]
    points or images (continuous: dequantize 8-bit images first, ``dequantize``, and convert with
    ``bits_per_dim``). ``divergence``: "exact" (d VJPs per denoiser call, for small d) or "hutchinson" (``probes``
    VJPs per call, ``probe`` "rademacher" or "gaussian" entries drawn from ``generator``). ``rtol``/``atol``: the
    solver's tolerances on x and on the integral. ``class_labels``: one row per sample, passed to the denoiser."""
    flow = ode_to_noise(denoiser, x, sigma_min=sigma_min, sigma_max=sigma_max, divergence=divergence,
                        probes=probes, probe=probe, rtol=rtol, atol=atol, generator=generator,
                        class_labels=class_labels)
    return gaussian_log_prob(flow.latent, float(sigma_max)) + flow.integral


def level_spacing(levels: int) -> float:
    """Δ = 2/(L − 1): the distance between two of the L levels x_u = 2u/(L − 1) − 1 of [−1, 1]."""
    return 2.0 / (check_count("levels", levels, least=2) - 1)


def dequantize(images: torch.Tensor, levels: int = 256, generator=None) -> torch.Tensor:
    """x + Δ·(U − ½), U ~ U(0, 1) per entry (float64): images on the L levels x_u = 2u/(L − 1) − 1 of [−1, 1]
    (edmlab's data sets: u/127.5 − 1 for 8-bit, k/8 − 1 for the 17-level digits) spread uniformly over their bins
    [x_u − Δ/2, x_u + Δ/2), the very bins that ``edmlab.infra.images.to_uint8`` maps to u. Images off those levels
    (another data range, latents) are refused: their bits/dim would mean nothing."""
    spacing = level_spacing(levels)
    x = images.detach().to(torch.float64)
    lo, hi = float(x.min()), float(x.max())
    steps = (x + 1) / spacing
    off_grid = float((steps - steps.round()).abs().max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6 or off_grid > 1e-3:
        raise ValueError(f"dequantization='uniform' needs image data on the {levels} levels of [-1, 1] "
                         f"(x = 2u/{levels - 1} - 1), got values in [{lo:.4g}, {hi:.4g}]"
                         + (f", up to {off_grid:.3g} level off the grid" if off_grid > 1e-3 else "")
                         + ": pass levels=<the data's level count> or score continuous data with bits_per_dim("
                           "..., dequantization='none')")
    device = generator.device if generator is not None else x.device
    noise = torch.rand(x.shape, generator=generator, device=device, dtype=torch.float64).to(x.device)
    return x + spacing * (noise - 0.5)


def bits_per_dim(log_p: torch.Tensor, dims: int, dequantization: str = "uniform", levels: int = 256) -> torch.Tensor:
    """Bits per dimension of log-densities ``log_p`` (nats, per sample) of samples with ``dims`` entries.

    ``dequantization="uniform"``: ``log_p`` is log p(x̃) at dequantized images x̃ = x_u + Δ·(U − ½)
    (``dequantize``), and the bits are those of the discrete pixels u. In pixel units y = (x + 1)/Δ + ½ the bins
    [x_u − Δ/2, x_u + Δ/2) become [u, u + 1), so y = u + U is the uniform dequantization of Theis et al. 2016 and
    Song et al. 2021, with density p_Y(y) = p(x)·Δ^d (dx/dy = Δ in each of the d entries). Jensen's inequality
    bounds the model's probability of the pixels, P(u) = ∫_{[u, u+1)^d} p_Y ≥ exp E_U[log p_Y(u + U)], so

        bits/dim = −(log p(x̃) + d·log Δ)/(d·ln 2) = −log p(x̃)/(d·ln 2) + log₂((L − 1)/2)

    is an upper bound on −log₂ P(u)/d, in expectation over U; + log₂ 127.5 = 6.9944 for L = 256 levels. (Song et
    al. map [0, 256) onto [−1, 1) by y/128 − 1, Δ = 1/128, + 7; edmlab's images are u/127.5 − 1, whose bins have
    Δ = 2/255.) ``"none"``: continuous data (points), −log p/(d·ln 2)."""
    check_choice("dequantization", dequantization, DEQUANTIZATIONS)
    dims = check_count("dims", dims)
    bits = -log_p.to(torch.float64) / (dims * math.log(2))
    return bits - math.log2(level_spacing(levels)) if dequantization == "uniform" else bits
