"""σ(t), s(t) and the time-step discretizations against the paper's numbers and closed forms."""
import math

import pytest
import torch

import edmlab
from edmlab.design.scalings import NoScaling, VPScaling
from edmlab.design.schedules import LinearSchedule, VESchedule, VPSchedule

SCHEDULES = [LinearSchedule(), VESchedule(), VPSchedule(), VPSchedule.fit(0.002, 80.0)]


def test_vp_schedule_endpoints():
    vp = VPSchedule()
    assert float(vp.sigma(1.0)) == pytest.approx(152.167, abs=1e-3)
    assert float(vp.sigma(1e-3)) == pytest.approx(0.010486, abs=1e-6)
    assert float(vp.sigma(1e-5)) == pytest.approx(0.0010005, abs=1e-7)


def test_vp_refit_passes_through_sigma_range():
    vp = VPSchedule.fit(0.002, 80.0, epsilon_s=1e-3)
    assert float(vp.sigma(1e-3)) == pytest.approx(0.002, rel=1e-12)
    assert float(vp.sigma(1.0)) == pytest.approx(80.0, rel=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_inverse_and_derivative(schedule):
    t = torch.linspace(0.05, 1.0, 20, dtype=torch.float64)
    torch.testing.assert_close(schedule.sigma_inv(schedule.sigma(t)), t, rtol=1e-12, atol=1e-12)
    h = 1e-6
    finite = (schedule.sigma(t + h) - schedule.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(schedule.sigma_deriv(t), finite, rtol=1e-6, atol=0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_scaling_derivative(schedule):
    t = torch.linspace(0.05, 1.0, 20, dtype=torch.float64)
    for scaling in (VPScaling(schedule), NoScaling(schedule)):
        h = 1e-6
        finite = (scaling.s(t + h) - scaling.s(t - h)) / (2 * h)
        torch.testing.assert_close(scaling.s_deriv(t), finite, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(VPScaling(schedule).s(t), 1 / (1 + schedule.sigma(t) ** 2).sqrt())


def test_edm_grid_18_steps_matches_paper():
    expected = [80, 57.59, 40.79, 28.37, 19.35, 12.91, 8.40, 5.32, 3.26, 1.92, 1.09, 0.585, 0.296, 0.140, 0.060,
                0.023, 0.0075, 0.002, 0.0]
    sigmas = edmlab.sigma_steps(18)
    assert sigmas.dtype == torch.float64 and len(sigmas) == 19
    for got, want in zip(sigmas.tolist(), expected):
        digits = max(2, -math.floor(math.log10(want)) + 1) if want else 12
        assert round(got, digits) == pytest.approx(want, abs=10**-digits), (got, want)


def test_edm_grid_rho_limits():
    lo, hi = 0.002, 80.0
    uniform = edmlab.edm_sigmas(11, lo, hi, rho=1)
    torch.testing.assert_close(uniform, torch.linspace(hi, lo, 11, dtype=torch.float64))
    geometric = edmlab.ve_sigmas(11, lo, hi)
    torch.testing.assert_close(edmlab.edm_sigmas(11, lo, hi, rho=1e6), geometric, rtol=1e-4, atol=0)


def test_ve_grid_is_geometric_and_vp_grid_uniform_in_t():
    ve = edmlab.ve_sigmas(10, 0.02, 100.0)
    ratios = ve[1:] / ve[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand_as(ratios))
    assert float(ve[0]) == pytest.approx(100) and float(ve[-1]) == pytest.approx(0.02)
    vp = edmlab.vp_sigmas(10, 0.0105, 152.0)
    t = VPSchedule.fit(0.0105, 152.0).sigma_inv(vp)
    torch.testing.assert_close(t, torch.linspace(1, 1e-3, 10, dtype=torch.float64))


def test_iddpm_grid_endpoints():
    u = edmlab.iddpm_grid()
    assert len(u) == 1001 and float(u[-1]) == 0
    assert float(u[0]) == pytest.approx(20291, rel=1e-4)
    assert float(u[-2]) == pytest.approx(0.006425, rel=1e-3)
    assert bool((u[:-1] > u[1:]).all())
    sigmas = edmlab.iddpm_sigmas(18, 0.002, 81.0)
    inside = u[(u >= 0.002) & (u <= 81.0)]
    assert float(sigmas[0]) == float(inside[0]) and float(sigmas[-1]) == float(inside[-1])
    assert all(bool((inside == s).any()) for s in sigmas)


def test_default_sigma_ranges():
    assert edmlab.sigma_range("edm") == (0.002, 80.0)
    assert edmlab.sigma_range("ve") == (0.02, 100.0)
    assert edmlab.sigma_range("iddpm") == (0.002, 81.0)
    lo, hi = edmlab.sigma_range("vp")
    assert lo == pytest.approx(0.0105, abs=1e-4) and hi == pytest.approx(152.2, abs=0.05)


def test_sigma_range_clamped_to_network():
    class VE:
        sigma_min, sigma_max = 0.02, 100.0
    assert edmlab.sigma_range("edm", denoiser=VE()) == (0.02, 80.0)
    assert edmlab.sigma_steps(18, denoiser=VE())[-2] == pytest.approx(0.02)


def test_time_steps_honour_round_sigma():
    precond = edmlab.iDDPMPrecond(torch.nn.Identity())
    sigmas = edmlab.sigma_steps(10, denoiser=precond)[:-1]
    u = precond.u.double()
    for s in sigmas:
        assert (u - s).abs().min() < 1e-5 * s


def _nvlabs_vp_grid(num_steps, epsilon_s):
    """NVlabs/edm generate.py ablation_sampler, discretization='vp' with default σ range, transcribed independently:
    σ_min = σ_vp(ε_s), σ_max = σ_vp(1) of β_d=19.9, β_min=0.1; β refit; t uniform from 1 to ε_s."""
    def vp_sigma(beta_d, beta_min, t):
        return (math.e ** (0.5 * beta_d * t**2 + beta_min * t) - 1) ** 0.5
    sigma_min, sigma_max = vp_sigma(19.9, 0.1, epsilon_s), vp_sigma(19.9, 0.1, 1.0)
    beta_d = 2 * (math.log(sigma_min**2 + 1) / epsilon_s - math.log(sigma_max**2 + 1)) / (epsilon_s - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    return [vp_sigma(beta_d, beta_min, 1 + i / (num_steps - 1) * (epsilon_s - 1)) for i in range(num_steps)] + [0.0]


@pytest.mark.parametrize("epsilon_s", [1e-3, 1e-4])
def test_vp_default_sigma_min_follows_epsilon_s_as_nvlabs(epsilon_s):
    lo, hi = edmlab.sigma_range("vp", epsilon_s=epsilon_s)
    assert lo == pytest.approx({1e-3: 0.0104860, 1e-4: 0.0031780}[epsilon_s], rel=1e-5)
    assert hi == pytest.approx(152.16697, rel=1e-6)
    got = edmlab.sigma_steps(18, discretization="vp", schedule="vp", epsilon_s=epsilon_s)
    torch.testing.assert_close(got, torch.tensor(_nvlabs_vp_grid(18, epsilon_s), dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)


def test_logsnr_grid_is_uniform_in_log_sigma():
    sigmas = edmlab.sigma_steps(9, discretization="logsnr")[:-1]
    torch.testing.assert_close(sigmas.log(), torch.linspace(math.log(80.0), math.log(0.002), 9, dtype=torch.float64))


@pytest.mark.parametrize("rho", [1.0, 2.0])
def test_time_uniform_grid_is_uniform_in_vp_time_to_the_1_over_rho(rho):
    lo, hi, eps = 0.002, 80.0, 1e-3
    sigmas = edmlab.sigma_steps(7, discretization="time_uniform", rho=rho)[:-1]
    # The refit VP schedule through σ(ε_s)=0.002, σ(1)=80, written out: σ⁻¹(σ) = (√(β_min² + 2β_d ln(1+σ²)) − β_min)/β_d.
    beta_d = 2 * (math.log(lo**2 + 1) / eps - math.log(hi**2 + 1)) / (eps - 1)
    beta_min = math.log(hi**2 + 1) - 0.5 * beta_d
    t = ((beta_min**2 + 2 * beta_d * sigmas.square().log1p()).sqrt() - beta_min) / beta_d
    torch.testing.assert_close(t ** (1 / rho), torch.linspace(1.0, eps ** (1 / rho), 7, dtype=torch.float64))
    assert beta_d == pytest.approx(17.538, abs=1e-3) and beta_min == pytest.approx(-0.00477, abs=1e-5)
    torch.testing.assert_close(edmlab.sigma_steps(7, discretization="time_uniform", rho=1.0),
                               edmlab.sigma_steps(7, discretization="vp", sigma_min=lo, sigma_max=hi))


def test_custom_grid_is_walked_as_given():
    steps = [40.0, 3.0, 0.5, 0.01]
    got = edmlab.sigma_steps(None, discretization="custom", steps=steps)
    assert got.tolist() == steps + [0.0]
    mixture = edmlab.GaussianMixture([[-1.0], [1.0]], 0.3)
    z = torch.randn(5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    seen = []
    edmlab.sample(mixture, z, solver="euler", discretization="custom", steps=steps, num_steps=None,
                  callback=lambda step: seen.append(step["sigma"]))
    assert seen == steps


@pytest.mark.parametrize("steps, kwargs, message", [
    ([10.0, 10.0, 1.0], {}, r"strictly decreasing, but sigma\[0\]=10.0 is followed by sigma\[1\]=10.0"),
    ([10.0, 1.0, 0.0], {}, r"must be positive \(the sampler appends sigma=0 itself\), got 0.0"),
    ([120.0, 1.0], {}, r"sigma=120.0 leaves the network's range \[0.02, 100.0\]"),
    ([10.0, 1.0], {"num_steps": 18}, r"grid has 2 noise levels but num_steps=18; set num_steps=null"),
    ([10.0, 1.0], {"sigma_min": 0.5}, r"takes its range from the grid; drop sigma_min=0.5"),
    (None, {}, r"discretization=custom needs steps"),
])
def test_custom_grid_bad_input(steps, kwargs, message):
    class VE:
        sigma_min, sigma_max = 0.02, 100.0
    kwargs = {"num_steps": None} | kwargs
    with pytest.raises(ValueError, match=message):
        edmlab.sigma_steps(discretization="custom", steps=steps, denoiser=VE(), **kwargs)


def test_steps_only_for_custom():
    with pytest.raises(ValueError, match=r"steps is only read by discretization=custom, not discretization=edm"):
        edmlab.sigma_steps(10, steps=[1.0, 0.1])


def test_steps_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"steps file .*missing.json does not exist"):
        edmlab.sigma_steps(None, discretization="custom", steps=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json is not a steps file \(JSON with a 'sigmas' list\)"):
        edmlab.sigma_steps(None, discretization="custom", steps=str(tmp_path / "bad.json"))
