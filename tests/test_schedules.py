"""σ(t), s(t) and the time-step discretizations against the paper's numbers and closed forms."""
import math

import pytest
import torch

import edmlab
from edmlab.scalings import NoScaling, VPScaling
from edmlab.schedules import LinearSchedule, VESchedule, VPSchedule

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
