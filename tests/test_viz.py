"""edmlab.viz.flows: the figures are written, the flow curves are the exact ODE solution, and the drawn sampler
steps are the ones edmlab.sample takes."""
import math
import subprocess
import sys

import pytest
import torch
from PIL import Image

import edmlab
from edmlab.viz import flows


@pytest.fixture(scope="module")
def picture():
    return flows.compute_flows(sigma_max=5.0, num_steps=6, num_curves=7, rho=3.0, grid_points=65)


def test_command_writes_both_pngs(tmp_path):
    out = tmp_path / "figures"
    result = subprocess.run([sys.executable, "-m", "edmlab.cli.flows", "--out", str(out)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name, size in (("flows.png", (1080, 600)), ("warps.png", (1800, 552))):
        path = out / name
        assert path.stat().st_size > 10_000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == size
            image.verify()
        with Image.open(path) as image:
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 200  # a picture, not a blank canvas


def test_flow_curves_end_at_the_exact_ode_endpoint(picture):
    start = picture.latents * picture.sigma_max
    assert picture.sigmas[0] == picture.sigma_max and picture.sigmas[-1] == 0
    torch.testing.assert_close(picture.curves[0], start, rtol=0, atol=0)
    endpoint = picture.mixture.ode_solution(start, picture.sigma_max)
    assert (picture.curves[-1] - endpoint).abs().max() < 1e-6
    j = len(picture.sigmas) // 2
    midway = picture.mixture.ode_solution(start, picture.sigma_max, float(picture.sigmas[j]))
    assert (picture.curves[j] - midway).abs().max() < 1e-6


def test_flow_curves_do_not_cross(picture):
    """1-D ODE solutions through distinct points never meet: the order of the starting points is kept."""
    assert bool((picture.curves[..., 0].diff(dim=1) > 0).all())


def test_exact_flow_of_one_gaussian_matches_closed_form():
    """For p = N(μ, s²): x(σ) = μ + (x(σ_max) − μ)·√(s² + σ²)/√(s² + σ_max²)."""
    mu, s, sigma_max = 0.7, 0.4, 3.0
    gaussian = edmlab.GaussianMixture([[mu]], [s])
    sigmas = flows.sigma_grid(sigma_max, 17)
    start = torch.tensor([[-4.0], [0.5], [2.5]], dtype=torch.float64)
    expected = mu + (start - mu) * ((s**2 + sigmas**2) / (s**2 + sigma_max**2)).sqrt().reshape(-1, 1, 1)
    assert (flows.exact_flow(gaussian, start, sigmas) - expected).abs().max() < 1e-8


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_markers_are_the_sampler_callback_steps(picture, solver):
    records = []
    final = edmlab.sample(picture.mixture, picture.latents, solver=solver, num_steps=picture.num_steps,
                          sigma_min=picture.sigma_min, sigma_max=picture.sigma_max, rho=picture.rho,
                          callback=records.append)
    t, x = picture.steps[solver]
    assert len(records) == picture.num_steps and t.shape == (picture.num_steps + 1,)
    assert t.tolist() == [records[0]["t"]] + [r["t_next"] for r in records]
    assert t[0] == pytest.approx(picture.sigma_max, rel=1e-14) and t[-1] == 0
    torch.testing.assert_close(x[1:], torch.stack([r["x"] for r in records]), rtol=0, atol=0)
    torch.testing.assert_close(x[0], picture.latents * picture.sigma_max, rtol=1e-14, atol=0)
    torch.testing.assert_close(x[-1], final, rtol=0, atol=0)


def test_heun_lands_closer_to_the_flow_than_euler(picture):
    """What the picture shows: at N = 6 (ρ = 3) Heun's endpoints lie well over twice as close (RMS) as Euler's."""
    error = {k: (picture.steps[k][1][-1] - picture.curves[-1]).pow(2).mean().sqrt().item() for k in ("euler", "heun")}
    assert error["heun"] < error["euler"] / 2, error


@pytest.mark.parametrize("schedule,scaling", flows.WARPS)
def test_warped_curves_start_where_that_schedule_starts(picture, schedule, scaling):
    """In each panel the step polylines start on the warped flow curves: (t_0, x_0) = (σ⁻¹(σ_max), s(t_0)·σ_max·z),
    which for vp is σ_max·z/√(1 + σ_max²)."""
    flow = edmlab.make_flow(schedule, scaling, picture.sigma_min, picture.sigma_max)
    t_curve, x_curve = flows.warp(flow, picture.sigmas, picture.curves)
    t, x = flows.sampler_steps(picture.mixture, picture.latents, solver="euler", schedule=schedule, scaling=scaling,
                               num_steps=4, sigma_min=picture.sigma_min, sigma_max=picture.sigma_max)
    assert float(t[0]) == pytest.approx(float(t_curve[0]), rel=1e-9)
    torch.testing.assert_close(x[0], x_curve[0], rtol=1e-9, atol=1e-12)
    if scaling == "vp":
        expected = picture.latents * picture.sigma_max / math.sqrt(1 + picture.sigma_max**2)
        torch.testing.assert_close(x[0], expected, rtol=1e-9, atol=0)
    assert float(t_curve[-1]) == 0 and t[-1] == 0


def test_bad_inputs_are_named(tmp_path):
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="not_a_dir"):
        flows.plot_flows(a_file, flows.compute_flows(num_curves=2, grid_points=9))
    with pytest.raises(ValueError, match="D=2"):
        flows.compute_flows(edmlab.GaussianMixture([[0.0, 0.0], [1.0, 1.0]], 0.3))
    with pytest.raises(ValueError, match="num_curves=0"):
        flows.starting_latents(0)
