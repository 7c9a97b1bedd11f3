"""Consistency models (objective=ict|ect, solver=consistency): the boundary condition of the parametrisation, each
loss against a direct transcription of its paper's formula (iCT: Song & Dhariwal 2023; ECT: locuslab/ect
``training/loss.py::ECMLoss``) on fixed inputs, iCT's curriculum, the sampler (Song et al. 2023, Algorithm 1)
step by step, its NFE and per-sample determinism, and the one-line refusals of bad settings. The training runs
(tuning, resume, refusals of whole runs) are in test_consistency_runs.py."""
import math

import pytest
import torch

from edmlab.design.consistency import ECTObjective, ICTObjective, SCMObjective, distance, pseudo_huber_c
from edmlab.design.preconditioning import EDMPrecond
from edmlab.sampling.rng import SeedStreams
from edmlab.sampling.sampler import sample
from edmlab.sampling.solvers import CountingDenoiser

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


class Affine(torch.nn.Module):
    """F(x_in, c_noise) = w·x_in + v·c_noise, with dropout: a raw network whose output is known."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.w, self.v, self.dropout = torch.nn.Parameter(torch.tensor(0.7)), torch.nn.Parameter(torch.tensor(-0.3)), dropout

    def forward(self, x, c_noise, class_labels=None, augment_labels=None):
        out = self.w * x + self.v * c_noise.reshape(-1, *[1] * (x.ndim - 1))
        return torch.nn.functional.dropout(out, self.dropout, self.training)


def consistency_net(dropout=0.0, epsilon=0.002):
    return EDMPrecond(Affine(dropout), sigma_data=0.5, boundary_sigma=epsilon)


def test_the_boundary_condition_holds_exactly_and_the_coefficients_are_cms():
    """f(x, ε) = x bit for bit; at other σ, CM App. C: c_skip = σ_d²/((σ−ε)² + σ_d²), c_out = σ_d(σ−ε)/√(σ²+σ_d²)."""
    f = consistency_net()
    x = torch.randn(5, 1, 4, 4) * 3
    assert torch.equal(f(x, torch.full((5,), 0.002)), x)
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0], dtype=torch.float64).reshape(-1, 1)
    c_skip, c_out, c_in, c_noise = f.coefficients(sigma)
    s = sigma.flatten().tolist()
    assert c_skip.flatten().tolist() == pytest.approx([0.25 / ((v - 0.002) ** 2 + 0.25) for v in s], rel=1e-14)
    assert c_out.flatten().tolist() == pytest.approx([0.5 * (v - 0.002) / math.sqrt(v * v + 0.25) for v in s],
                                                     rel=1e-14)
    assert c_in.flatten().tolist() == pytest.approx([1 / math.sqrt(v * v + 0.25) for v in s], rel=1e-14)
    assert f.sigma_min == 0.002
    plain = EDMPrecond(Affine(), sigma_data=0.5).coefficients(sigma)
    assert plain[0].flatten().tolist() == pytest.approx([0.25 / (v * v + 0.25) for v in s], rel=1e-14)


def test_pseudo_huber_constant_and_metric():
    """iCT: c = 0.00054·√d (CIFAR-10, d = 3072: 0.02993); d(a, b) = √(‖a−b‖² + c²) − c; l2 = ‖a−b‖²."""
    assert pseudo_huber_c(3072) == pytest.approx(0.0299298, rel=1e-5)
    a, b = torch.tensor([[3.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    assert distance(a, b, "l2").tolist() == [25.0, 0.0]
    assert distance(a, b, "pseudo_huber", 0.5).tolist() == pytest.approx([math.sqrt(25.25) - 0.5, 0.0])


def ect_transcription(f, y, t, eps, stage, q=2.0, k=8.0, b=1.0, c=None):
    """locuslab/ect ECMLoss.__call__ written out again: r = t(1 − (1 + k·sigmoid(−bt))/q^{stage+1}) clamped at 0,
    D_yr = y where r = 0, L = Σ(D_yt − D_yr)², √(L + c²) − c, divided by t − r."""
    r = (t * (1 - (1 + k * torch.sigmoid(-b * t)) / q ** (stage + 1))).clamp(min=0)
    view = (-1, 1, 1, 1)
    D_yt = f(y + eps * t.reshape(view), t)
    with torch.no_grad():
        D_yr = f(y + eps * torch.where(r > 0, r, t).reshape(view), torch.where(r > 0, r, t))
    D_yr = torch.where((r > 0).reshape(view), D_yr, y)
    L = ((D_yt - D_yr) ** 2).reshape(len(y), -1).sum(-1)
    return (torch.sqrt(L + c**2) - c) / (t - r), r


@pytest.mark.parametrize("stage", [0, 3])
def test_ect_loss_equals_a_transcription_of_ecmloss(stage):
    y, eps = torch.randn(6, 1, 4, 4) * 0.5, torch.randn(6, 1, 4, 4)
    t = torch.tensor([0.01, 0.2, 0.9, 2.0, 7.0, 60.0])
    objective = ECTObjective(stage_kimg=1.0)
    objective.set_progress(stage * 1000 + 999)
    assert objective.stage == stage
    f = consistency_net()
    out = objective(f, y, sigma=t, noise=eps)
    expected, r = ect_transcription(f, y, t, eps, stage, c=0.00054 * 4)
    assert bool((r == 0).any()) == (stage == 0)  # stage 0: r = 0 at low σ, pure denoising there
    torch.testing.assert_close(out.per_image, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.loss, expected.mean(), rtol=1e-6, atol=0)
    grad, = torch.autograd.grad(out.loss, [f.model.w])
    expected_grad, = torch.autograd.grad(ect_transcription(f, y, t, eps, stage, c=0.00054 * 4)[0].mean(), [f.model.w])
    torch.testing.assert_close(grad, expected_grad, rtol=3e-5, atol=0)  # float32 sums in another order: 4e-6 seen


def test_ict_curriculum_grid_and_probabilities():
    """N(k) = min(s0·2^⌊k/K'⌋, s1) + 1, K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋: K = 1563 steps (200 kimg of 128) gives K' = 195;
    the grid is the Karras one from ε to 80 and p(i) ∝ erf((ln σ_{i+1} + 1.1)/(2√2)) − erf((ln σ_i + 1.1)/(2√2))."""
    objective = ICTObjective(duration_kimg=200, batch_size=128)
    assert [objective.grid_size(k) for k in (0, 194, 195, 389, 390, 1169, 1170, 1364, 1365, 1562)] == \
        [11, 11, 21, 21, 41, 321, 641, 641, 1281, 1281]
    grid = objective.grid.double()
    i = torch.arange(11, dtype=torch.float64)
    karras = (0.002 ** (1 / 7) + i / 10 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    torch.testing.assert_close(grid, karras, rtol=1e-6, atol=0)
    erf = [math.erf((math.log(s) + 1.1) / (2 * math.sqrt(2))) for s in karras.tolist()]
    p = torch.tensor([b - a for a, b in zip(erf[:-1], erf[1:])], dtype=torch.float64)
    torch.testing.assert_close(objective.noise_distribution.probabilities.double(), p, rtol=1e-5, atol=0)
    draws = objective.noise_distribution.sample(20000, generator=torch.Generator().manual_seed(0))
    counts = torch.stack([(draws == s).sum() for s in objective.grid[1:]]).double() / 20000
    assert (counts - p / p.sum()).abs().max() < 0.012  # 4 s.e. of the largest bin


def test_ict_loss_equals_its_formula():
    """λ = 1/(σ_{i+1} − σ_i) times the pseudo-Huber distance between f at σ_{i+1} and sg f at the grid point σ_i."""
    objective = ICTObjective(duration_kimg=10, batch_size=8)
    y, eps = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    grid = objective.grid
    sigma, r = grid[[1, 4, 7, 10]], grid[[0, 3, 6, 9]]
    assert torch.equal(objective.pair(sigma), r)
    f = consistency_net()
    out = objective(f, y, sigma=sigma, noise=eps)
    view = (-1, 1, 1, 1)
    with torch.no_grad():
        target = f(y + eps * r.reshape(view), r)
    sq = ((f(y + eps * sigma.reshape(view), sigma) - target) ** 2).flatten(1).sum(1)
    c = 0.00054 * 4
    torch.testing.assert_close(out.per_image, (torch.sqrt(sq + c * c) - c) / (sigma - r), rtol=1e-6, atol=0)


def test_both_passes_share_their_dropout_masks():
    """ECT's shared dropout: the teacher pass runs with the random state the student pass started from."""
    states = []

    class Recording(Affine):
        def forward(self, *args, **kwargs):
            states.append(torch.get_rng_state())
            return super().forward(*args, **kwargs)

    f = EDMPrecond(Recording(dropout=0.5), boundary_sigma=0.002).train()
    ECTObjective(stage_kimg=1.0)(f, torch.randn(3, 1, 2, 2), sigma=torch.tensor([1.0, 2.0, 3.0]),
                                 noise=torch.randn(3, 1, 2, 2))
    assert len(states) == 2 and torch.equal(states[0], states[1])


@pytest.mark.parametrize("kwargs,match", [
    ({"metric": "pseudo_huber", "c": 0}, r"objective.c must be a number > 0, got c=0"),
    ({"metric": "pseudo_huber", "c": -0.1}, r"objective.c must be a number > 0, got c=-0.1"),
    ({"metric": "lpips"}, r"objective.metric='lpips' is not one of l2, pseudo_huber"),
    ({"q": 1.0}, r"objective.q must be > 1"),
    ({"weighting": "snr"}, r"objective.weighting='snr' is not one of gap, edm")])
def test_bad_objective_values_are_refused_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ECTObjective(**kwargs)


@pytest.mark.parametrize("build,match", [
    (lambda: ECTObjective(P_std=0), r"P_std must be > 0, got P_std=0"),
    (lambda: ICTObjective(duration_kimg=10, batch_size=8, P_std=-1), r"objective.P_std must be a number > 0"),
    (lambda: ICTObjective(duration_kimg=10, batch_size=8, s0=20, s1=10), r"objective.s1=10 must be >= objective.s0=20"),
    (lambda: ICTObjective(duration_kimg=None, batch_size=8), r"objective.duration_kimg must be a number > 0"),
    (lambda: SCMObjective(tangent_c=0), r"objective.tangent_c must be a number > 0, got tangent_c=0")])
def test_objectives_without_a_way_to_draw_their_sigmas_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_schedule_giving_r_at_or_above_sigma_is_refused():
    """k = −3: n(σ) = 1 − 3·sigmoid(−σ) < 0 for σ < ln 2, so r = σ(1 − n/2) > σ there: at σ = 1e-4,
    r = 1.24996e-4, at σ = 0.5, 0.533156 (refused when the objective is built and, if changed later, at the step)."""
    with pytest.raises(ValueError, match=r"objective=ECTObjective: the pair has r=0.000124996 >= σ=0.0001; a consistency "
                                         r"pair needs r < σ"):
        ECTObjective(k=-3.0)
    objective = ECTObjective()
    objective.k = -3.0
    with pytest.raises(ValueError, match=r"the pair has r=0.533156 >= σ=0.5"):
        objective(consistency_net(), torch.zeros(2, 1, 2, 2), sigma=torch.tensor([3.0, 0.5]),
                  noise=torch.ones(2, 1, 2, 2))


def test_scm_tangent_and_loss_equal_sCM_algorithm_1_in_closed_form():
    """sCM Alg. 1 on F_EDM(x_in, c) = w·x_in + v·c: TrigFlow's F(x, t) = −(w·x/σ_d + v·ln(σ_d tan t)/4), so
    dF/dt = −(w·(dx_t/dt)/σ_d + v/(4 sin t cos t)) in closed form (no jvp); g = −cos²t(σ_d F − dx_t/dt)
    − w_u·cos t sin t (x_t + σ_d dF/dt), g/(‖g‖ + 0.1); the loss ‖F_θ − F⁻ − g‖² is ‖g‖² with gradient
    2·g·x_t/σ_d in w."""
    sd, warm = 0.5, 0.3
    objective = SCMObjective(warmup_kimg=10.0, sigma_data=sd)
    objective.set_progress(3000)
    assert objective.warmup == warm
    f = EDMPrecond(Affine(), sigma_data=sd, boundary_sigma=0.0).train()
    y, n = torch.randn(4, 1, 3, 3, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.4, 2.0, 30.0])
    out = objective(f, y.float(), sigma=sigma, noise=n.float())
    w, v = 0.7, -0.3
    t = torch.atan(sigma.double() / sd).reshape(-1, 1, 1, 1)
    x_t, dx = t.cos() * y + t.sin() * sd * n, t.cos() * sd * n - t.sin() * y
    F = -(w * x_t / sd + v * torch.log(sd * t.tan()) / 4)
    dF = -(w * dx / sd + v / (4 * t.sin() * t.cos()))
    g = -t.cos() ** 2 * (sd * F - dx) - warm * t.cos() * t.sin() * (x_t + sd * dF)
    g = g / (g.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) + 0.1)
    torch.testing.assert_close(out.per_image.double(), (g**2).flatten(1).sum(1), rtol=2e-5, atol=1e-7)
    grad, = torch.autograd.grad(out.loss, [f.model.w])
    torch.testing.assert_close(grad.double(), (2 * g * x_t / sd).flatten(1).sum(1).mean(), rtol=2e-5, atol=1e-7)


def test_boundary_zero_is_edms_own_coefficients():
    sigma = torch.logspace(-3, 2, 11).reshape(-1, 1)
    for a, b in zip(EDMPrecond(Affine(), boundary_sigma=0.0).coefficients(sigma), EDMPrecond(Affine()).coefficients(sigma)):
        assert torch.equal(a, b)


def test_the_sampler_is_algorithm_1_step_by_step():
    """x̂ = f(80·z_0, 80); x = x̂ + √(σ_1² − ε²)·z_1; x̂ = f(x, σ_1): with per-sample streams, so each sample depends
    only on its seed (the same in a batch of 3 and alone)."""
    f = consistency_net().eval()
    steps = [80.0, 0.821, 0.002]
    latents = SeedStreams([5, 6, 7]).randn([1, 4, 4]).double()
    got = sample(f, latents, solver="consistency", discretization="custom", steps=steps,
                 generator=SeedStreams([5, 6, 7]))
    z1 = SeedStreams([5, 6, 7]).randn([1, 4, 4], dtype=torch.float64)  # the sampler's first draw from its streams
    with torch.no_grad():
        x_hat = f(latents * 80, torch.full((3,), 80.0)).double()
        x = x_hat + math.sqrt(0.821**2 - 0.002**2) * z1
        expected = f(x, torch.full((3,), 0.821)).double()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    alone = sample(f, SeedStreams([6]).randn([1, 4, 4]).double(), solver="consistency", discretization="custom",
                   steps=steps, generator=SeedStreams([6]))
    assert torch.equal(alone[0], got[1])


@pytest.mark.parametrize("nfe", [1, 2, 3])
def test_the_sampler_makes_nfe_calls(nfe):
    f = CountingDenoiser(consistency_net().eval())
    sample(f, torch.randn(4, 1, 2, 2, dtype=torch.float64), solver="consistency", nfe=nfe,
           generator=torch.Generator().manual_seed(0))
    assert (f.calls, f.evaluations) == (nfe, 4 * nfe)


def test_the_sampler_refuses_a_denoising_network():
    with pytest.raises(ValueError, match=r"solver=consistency needs a network trained as a consistency model "
                                         r"\(objective=ict or ect"):
        sample(EDMPrecond(Affine()).eval(), torch.randn(2, 1, 2, 2, dtype=torch.float64), solver="consistency", nfe=1)
