"""Consistency training: the ``objective`` options ``ict``, ``ect`` and ``scm`` (Song et al. 2023, "Consistency
Models" [CM]; Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models" [iCT]; Geng et al. 2024,
"Consistency Models Made Easy" [ECT]; ``SCMObjective``: Lu & Song 2024, continuous time, at the end).

A consistency model f(x, σ) = c_skip(σ)·x + c_out(σ)·F (``EDMPrecond(boundary_sigma=ε)``, f(x, ε) = x) maps every
point of an ODE trajectory to its origin. Each objective draws a pair σ > r ≥ 0 and minimises

    λ(σ, r)·d( f_θ(y + σ·n, σ), sg f_θ(y + r·n, r) ),     one n ~ N(0, I) for both points   [CM Eq. 10],

with the same network (no EMA teacher, [iCT]), the second pass without gradients and with the first pass's dropout
masks ([ECT]'s shared dropout: the random state is restored between the passes), and f(·, 0) = y (r = 0 is EDM's
denoising loss, [ECT]). The metric d is ``l2`` (‖Δ‖², [CM]) or ``pseudo_huber`` (√(‖Δ‖² + c²) − c with
c = 0.00054·√dim by default, [iCT]). What differs is the pair and λ:

- ``ICTObjective``: σ_{i+1} > σ_i neighbours of a Karras grid whose size doubles on a curriculum, the index drawn
  with lognormal probabilities, λ = 1/(σ_{i+1} − σ_i) [iCT];
- ``ECTObjective``: ln σ ~ N(P_mean, P_std²), r = σ·(1 − n(σ)/q^{stage+1}) with n(σ) = 1 + k·sigmoid(−b·σ), the
  stage advancing every ``stage_kimg``, λ = 1/(σ − r) [ECT's ``ECMLoss``, locuslab/ect].

The draws follow from the step (σ from the module's per-step generator, the schedule from ``set_progress``), so a
resumed run repeats an uninterrupted one.
"""
import math

import torch

from edmlab.design.discretizations import edm_sigmas
from edmlab.design.loss import LossOutput, step_inputs
from edmlab.design.training_noise import EDMNoise

METRICS = ("l2", "pseudo_huber")
PSEUDO_HUBER_SCALE = 0.00054  # iCT: c = 0.00054·√dim


def pseudo_huber_c(dim: int) -> float:
    """iCT's pseudo-Huber constant c = 0.00054·√dim for data of ``dim`` numbers (CIFAR-10: 0.0299)."""
    return PSEUDO_HUBER_SCALE * math.sqrt(dim)


def distance(a: torch.Tensor, b: torch.Tensor, metric: str, c: float | None = None) -> torch.Tensor:
    """d(a, b) per sample [N]: ``l2`` ‖a − b‖², ``pseudo_huber`` √(‖a − b‖² + c²) − c."""
    squared = ((a - b) ** 2).flatten(1).sum(1)
    if metric == "l2":
        return squared
    return (squared + c**2).sqrt() - c


def _positive(name: str, value, integer: bool = False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf:
        raise ValueError(f"objective.{name} must be a {'whole ' if integer else ''}number > 0, got {name}={value!r}")
    return value


class ConsistencyObjective:
    """The loss shared by ``ict`` and ``ect`` (module docstring); subclasses give ``noise_distribution`` (σ),
    ``pair(σ)`` (r) and ``weight(σ, r)`` (λ). ``boundary_sigma`` is ε of the network's preconditioning
    (``EDMPrecond(boundary_sigma=ε)``), which the training run sets from this objective."""

    weighting = None  # the loss_weighting group is not read

    def __init__(self, metric: str = "pseudo_huber", c: float | None = None, boundary_sigma: float = 0.002):
        if metric not in METRICS:
            raise ValueError(f"objective.metric={metric!r} is not one of {', '.join(METRICS)}")
        if metric == "pseudo_huber" and c is not None:
            _positive("c", c)
        elif metric == "l2" and c is not None:
            raise ValueError(f"objective.c={c} is the pseudo-Huber constant; metric=l2 takes none (set c=null)")
        self.metric, self.c, self.boundary_sigma = metric, c, float(_positive("boundary_sigma", boundary_sigma))

    def set_progress(self, cur_nimg: int) -> None:
        """Move the schedule to the training image count ``cur_nimg``."""

    def pair(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, sigma: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_pairs(self, sigma: torch.Tensor) -> torch.Tensor:
        """r = ``pair(σ)``, refused in one line where r ≥ σ."""
        r = self.pair(sigma)
        if not bool((r < sigma).all()):
            bad = int((r >= sigma).nonzero()[0])
            raise ValueError(f"objective={type(self).__name__}: the pair has r={float(r[bad]):.6g} >= "
                             f"σ={float(sigma[bad]):.6g}; a consistency pair needs r < σ (check the objective's "
                             f"schedule settings)")
        return r

    def metric_c(self, dim: int) -> float | None:
        """The pseudo-Huber c for data of ``dim`` numbers (iCT's 0.00054·√dim unless set); None for l2."""
        if self.metric == "l2":
            return None
        return self.c if self.c is not None else pseudo_huber_c(dim)

    def __call__(self, denoiser, images, class_labels=None, augment_pipe=None,
                 generator: torch.Generator | None = None, sigma: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None) -> LossOutput:
        """As ``DenoisingLoss``: ``sigma`` [N] and unit ``noise`` may be given, else drawn from ``generator``."""
        images, augment_labels, sigma, noise = step_inputs(self.noise_distribution, images, augment_pipe, generator,
                                                           sigma, noise)
        r = self.check_pairs(sigma)
        shape = (-1, *[1] * (images.ndim - 1))
        kwargs = dict(class_labels=class_labels, augment_labels=augment_labels)
        state = _random_state(images.device)
        student = denoiser(images + noise * sigma.reshape(shape), sigma, **kwargs)
        _restore(state, images.device)
        with torch.no_grad():
            r_call = torch.where(r > 0, r, sigma)  # a σ = 0 row is not evaluated: its target is y
            teacher = torch.nan_to_num(denoiser(images + noise * r_call.reshape(shape), r_call, **kwargs))
            target = torch.where((r > 0).reshape(shape), teacher, images)
        per_image = self.weight(sigma, r) * distance(student, target, self.metric, self.metric_c(images[0].numel()))
        return LossOutput(per_image.mean(), per_image.detach(), sigma.detach())


def _random_state(device: torch.device):
    """The state of the generator that dropout uses on ``device``."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _restore(state, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class ICTNoise:
    """iCT's discrete lognormal over a Karras grid σ_1 < … < σ_N: the pair index i (σ_{i+1} > σ_i) has
    p(i) ∝ erf((ln σ_{i+1} − P_mean)/(√2·P_std)) − erf((ln σ_i − P_mean)/(√2·P_std)); ``sample`` returns σ_{i+1}."""

    def __init__(self, P_mean: float, P_std: float):
        self.P_mean, self.P_std = P_mean, _positive("P_std", P_std)
        self.grid = None

    def set_grid(self, grid: torch.Tensor) -> None:
        self.grid = grid.to(torch.float32)
        cdf = torch.erf((self.grid.double().log() - self.P_mean) / (math.sqrt(2) * self.P_std))
        self.probabilities = (cdf[1:] - cdf[:-1]).float()

    def sample(self, n: int, generator=None, device="cpu") -> torch.Tensor:
        self.grid, self.probabilities = self.grid.to(device), self.probabilities.to(device)  # moved once, kept there
        index = torch.multinomial(self.probabilities, n, replacement=True, generator=generator)
        return self.grid[index + 1]


class ICTObjective(ConsistencyObjective):
    """``objective=ict`` (from scratch): the grid σ_i = (ε^{1/ρ} + (i−1)/(N−1)·(σ_max^{1/ρ} − ε^{1/ρ}))^ρ of
    N(k) = min(s0·2^⌊k/K'⌋, s1) + 1 points at optimizer step k of K, K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋ [iCT; CM Sec. 4];
    the pair (σ_{i+1}, σ_i) from ``ICTNoise``; λ = 1/(σ_{i+1} − σ_i)."""

    def __init__(self, duration_kimg: float, batch_size: int, P_mean: float = -1.1, P_std: float = 2.0,
                 s0: int = 10, s1: int = 1280, sigma_max: float = 80.0, rho: float = 7.0,
                 metric: str = "pseudo_huber", c: float | None = None, boundary_sigma: float = 0.002):
        super().__init__(metric, c, boundary_sigma)
        for name, value, integer in (("s0", s0, True), ("s1", s1, True), ("rho", rho, False)):
            _positive(name, value, integer)
        if s1 < s0:
            raise ValueError(f"objective.s1={s1} must be >= objective.s0={s0} (the curriculum's final and first size)")
        if not sigma_max > self.boundary_sigma:
            raise ValueError(f"objective.sigma_max={sigma_max} must exceed boundary_sigma={self.boundary_sigma}")
        self.steps = math.ceil(_positive("duration_kimg", duration_kimg) * 1000 / _positive("batch_size", batch_size,
                                                                                           integer=True))
        self.batch_size, self.s0, self.s1, self.sigma_max, self.rho = batch_size, s0, s1, float(sigma_max), rho
        self.noise_distribution = ICTNoise(P_mean, P_std)
        self.size = None
        self.set_progress(0)

    def grid_size(self, step: int) -> int:
        """N(k) of iCT's curriculum at optimizer step k."""
        stage_steps = self.steps // (int(math.log2(self.s1 // self.s0)) + 1)
        return min(self.s0 * 2 ** (step // max(stage_steps, 1)), self.s1) + 1

    def set_progress(self, cur_nimg: int) -> None:
        size = self.grid_size(cur_nimg // self.batch_size)
        if size != self.size:
            self.size = size
            self.grid = edm_sigmas(size, self.boundary_sigma, self.sigma_max, self.rho).flip(0).to(torch.float32)
            self.noise_distribution.set_grid(self.grid)

    def pair(self, sigma):
        self.grid = grid = self.grid.to(sigma.device)
        return grid[torch.searchsorted(grid, sigma) - 1]

    def weight(self, sigma, r):
        return 1 / (sigma - r)


class ECTObjective(ConsistencyObjective):
    """``objective=ect`` (tuning an EDM network): ln σ ~ N(P_mean, P_std²); r = max(σ·(1 − n(σ)/q^{stage+1}), 0)
    with n(σ) = 1 + k·sigmoid(−b·σ) (``adj=sigmoid``; ``const``: n = 1), stage = ⌊cur_nimg / (1000·stage_kimg)⌋;
    λ = 1/(σ − r) (``weighting=gap``, ECT's CIFAR-10 runs) or 1/σ² + 1/σ_d² (``weighting=edm``, EDM's λ(σ), ECT's
    ImageNet runs' ``snrpk``). Defaults: locuslab/ect ``ECMLoss`` and ``run_ecm.sh`` (q 2, k 8, b 1, stage 25k steps of 128)."""

    WEIGHTINGS = ("gap", "edm")
    ADJUSTMENTS = ("sigmoid", "const")

    def __init__(self, P_mean: float = -1.1, P_std: float = 2.0, q: float = 2.0, k: float = 8.0, b: float = 1.0,
                 stage_kimg: float = 3200.0, adj: str = "sigmoid", weighting: str = "gap", sigma_data: float = 0.5,
                 metric: str = "pseudo_huber", c: float | None = None, boundary_sigma: float = 0.002):
        super().__init__(metric, c, boundary_sigma)
        if not (isinstance(q, (int, float)) and q > 1):
            raise ValueError(f"objective.q must be > 1 (Δt shrinks by q per stage), got q={q!r}")
        if adj not in self.ADJUSTMENTS:
            raise ValueError(f"objective.adj={adj!r} is not one of {', '.join(self.ADJUSTMENTS)}")
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"objective.weighting={weighting!r} is not one of {', '.join(self.WEIGHTINGS)}")
        self.q, self.k, self.b, self.adj, self.mode = float(q), float(k), float(b), adj, weighting
        self.stage_nimg = _positive("stage_kimg", stage_kimg) * 1000
        self.sigma_data = float(_positive("sigma_data", sigma_data))
        self.noise_distribution = EDMNoise(P_mean, P_std)
        self.stage = 0
        self.check_pairs(torch.logspace(-4, 3, 71))  # n(σ) > 0 for every σ: the ratio r/σ only grows with the stage

    def set_progress(self, cur_nimg: int) -> None:
        self.stage = int(cur_nimg // self.stage_nimg)

    def pair(self, sigma):
        n = 1 + self.k * torch.sigmoid(-self.b * sigma) if self.adj == "sigmoid" else torch.ones_like(sigma)
        return (sigma * (1 - n / self.q ** (self.stage + 1))).clamp(min=0)

    def weight(self, sigma, r):
        if self.mode == "gap":
            return 1 / (sigma - r)
        return 1 / sigma**2 + 1 / self.sigma_data**2


class SCMObjective:
    """``objective=scm``: continuous-time consistency training in TrigFlow (Lu & Song 2024, "Simplifying,
    Stabilizing and Scaling Continuous-Time Consistency Models", Alg. 1, sCT), written on EDM's network.

    TrigFlow's x_t = cos t·y + sin t·z, z ~ N(0, σ_d²I), is EDM's x̂ = x_t/cos t = y + σ·n at σ = σ_d·tan t, and its
    consistency function f(x_t, t) = cos t·x_t − sin t·σ_d·F(x_t/σ_d, t) is EDM's D(x̂; σ) with F = −F_EDM (EDM's
    c_skip = cos²t, c_out = σ_d·sin t, c_in·x̂ = x_t/σ_d), so f(x, 0) = x with EDM's own coefficients
    (``boundary_sigma`` = 0) and an EDM network tunes into one. With dx_t/dt = cos t·z − sin t·y and
    dF⁻/dt = ∇_x F⁻·dx_t/dt + ∂_t F⁻ (one ``torch.func.jvp`` of the stop-gradient network),

        g = −cos²t·(σ_d·F⁻ − dx_t/dt) − w·cos t·sin t·(x_t + σ_d·dF⁻/dt),   g ← g/(‖g‖ + c),
        loss = ‖F_θ(x_t/σ_d, t) − F⁻ − g‖²   (summed over pixels; per sample),

    w = min(1, nimg/(1000·warmup_kimg)) the tangent warm-up, c = ``tangent_c`` (0.1). σ ~ lognormal(P_mean, P_std),
    i.e. t = arctan(e^τ/σ_d), τ ~ N(P_mean, P_std²) (sCM's ImageNet-64 proposal −1.0, 1.6). The time embedding is
    EDM's c_noise = ¼ ln σ, not sCM's t, so that EDM networks load; sCM's learned adaptive weight is not used."""

    weighting = None
    boundary_sigma = 0.0

    def __init__(self, P_mean: float = -1.0, P_std: float = 1.6, tangent_c: float = 0.1, warmup_kimg: float = 0.0,
                 sigma_data: float = 0.5, boundary_sigma: float = 0.0):
        if boundary_sigma != 0:
            raise ValueError(f"objective=scm has its boundary at σ = 0 (TrigFlow's t = 0), got "
                             f"boundary_sigma={boundary_sigma!r}; leave it 0")
        self.noise_distribution = EDMNoise(P_mean, P_std)
        self.tangent_c = float(_positive("tangent_c", tangent_c))
        if isinstance(warmup_kimg, bool) or not isinstance(warmup_kimg, (int, float)) or warmup_kimg < 0:
            raise ValueError(f"objective.warmup_kimg must be a number >= 0, got warmup_kimg={warmup_kimg!r}")
        self.warmup_nimg, self.sigma_data = float(warmup_kimg) * 1000, float(_positive("sigma_data", sigma_data))
        self.warmup = 1.0

    def set_progress(self, cur_nimg: int) -> None:
        self.warmup = min(1.0, cur_nimg / self.warmup_nimg) if self.warmup_nimg > 0 else 1.0

    def tangent(self, F_minus, dF_dt, x_t, dx_dt, t) -> torch.Tensor:
        """g of the class docstring, normalised per sample."""
        sd, cos, sin = self.sigma_data, t.cos(), t.sin()
        g = -cos**2 * (sd * F_minus - dx_dt) - self.warmup * cos * sin * (x_t + sd * dF_dt)
        norm = g.flatten(1).norm(dim=1).reshape(-1, *[1] * (g.ndim - 1))
        return g / (norm + self.tangent_c)

    def __call__(self, denoiser, images, class_labels=None, augment_pipe=None,
                 generator: torch.Generator | None = None, sigma: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None) -> LossOutput:
        from torch.func import jvp

        images, augment_labels, sigma, noise = step_inputs(self.noise_distribution, images, augment_pipe, generator,
                                                           sigma, noise)
        model, sd = denoiser.model, self.sigma_data
        label_dim = getattr(denoiser, "label_dim", 0)
        labels = None if not label_dim else (class_labels if class_labels is not None else
                                             torch.zeros(images.shape[0], label_dim, device=images.device))
        shape = (-1, *[1] * (images.ndim - 1))
        t = torch.atan(sigma.to(torch.float32) / sd).reshape(shape)
        z = noise * sd
        x_t, dx_dt = t.cos() * images + t.sin() * z, t.cos() * z - t.sin() * images

        def F(x, time):  # TrigFlow's F(x_t/σ_d, t) = −F_EDM(c_in·x̂, ¼ ln σ)
            c_noise = (sd * time.flatten().tan()).log() / 4
            return -model(x / sd, c_noise, class_labels=labels, augment_labels=augment_labels).to(torch.float32)

        state = _random_state(images.device)
        with torch.no_grad():
            F_minus, dF_dt = jvp(F, (x_t, t), (dx_dt, torch.ones_like(t)))
        _restore(state, images.device)
        g = self.tangent(F_minus, dF_dt, x_t, dx_dt, t)
        per_image = ((F(x_t, t) - F_minus - g) ** 2).flatten(1).sum(1)
        return LossOutput(per_image.mean(), per_image.detach(), sigma.detach())
