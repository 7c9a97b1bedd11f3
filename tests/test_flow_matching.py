"""Rectified flow / flow matching as one more point of EDM's design table (Liu et al. 2022; Lipman et al. 2023;
SD3, Esser et al. 2024): σ(t) = t/(1 − t), s(t) = 1 − t, the velocity preconditioning, the λ(σ) that turns EDM's
loss into the flow-matching MSE, and SD3's timestep densities — each checked against a direct transcription of the
flow-matching formulas, never against the code under test."""
import math

import pytest
import torch

import edmlab

MIX = edmlab.GaussianMixture([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.3]], [[0.5, 0.6, 0.4], [0.45, 0.5, 0.55]], [0.4, 0.6])


def test_flow_schedule_and_scaling_are_the_interpolant_x_t():
    t = torch.tensor([1e-3, 0.25, 0.5, 0.9, 80 / 81], dtype=torch.float64)
    schedule = edmlab.FlowSchedule()
    scaling = edmlab.FlowScaling(schedule)
    torch.testing.assert_close(schedule.sigma(t), t / (1 - t), rtol=0, atol=0)
    torch.testing.assert_close(schedule.sigma_inv(schedule.sigma(t)), t, rtol=1e-15, atol=0)
    torch.testing.assert_close(schedule.sigma_deriv(t), (1 - t) ** -2, rtol=1e-15, atol=0)
    torch.testing.assert_close(scaling.s(t), 1 - t, rtol=1e-14, atol=0)
    torch.testing.assert_close(scaling.s_deriv(t), -torch.ones_like(t), rtol=1e-13, atol=0)
    # s(t)·(x₀ + σ(t)·ε) = (1 − t)·x₀ + t·ε
    x0, eps = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for ti in t.tolist():
        state = float(scaling.s(ti)) * (x0 + float(schedule.sigma(ti)) * eps)
        torch.testing.assert_close(state, (1 - ti) * x0 + ti * eps, rtol=1e-13, atol=1e-13)


def test_the_flow_ode_lands_on_the_exact_endpoint_of_edms_ode():
    """EDM Sec. 2: one ODE, reparametrised. From the same latents, Heun in flow time (schedule=flow, scaling=flow)
    and in EDM's σ-time both reach the exact endpoint (DOP853) of EDM's ODE; the error falls with N."""
    z = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = MIX.ode_solution(z * 80.0, 80.0)
    for schedule, scaling in (("flow", "flow"), ("linear", "none")):
        errors = [(edmlab.sample(MIX, z, schedule=schedule, scaling=scaling, num_steps=n, sigma_min=0.002,
                                 sigma_max=80.0) - exact).abs().max().item() for n in (32, 512)]
        assert errors[1] < 1.2e-3 and errors[1] < errors[0] / 2.5, (schedule, scaling, errors)


class VelocityOracle(torch.nn.Module):
    """F(x_in, c_noise) = ε − x₀ for the (x₀, ε) it was given: a perfect velocity network."""

    def __init__(self, x0, eps):
        super().__init__()
        self.x0, self.eps = x0, eps

    def forward(self, x, c_noise, class_labels=None, augment_labels=None):
        return self.eps - self.x0


def test_flow_preconditioning_recovers_x0_from_a_perfect_velocity():
    generator = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 3, generator=generator)
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0])
    D = edmlab.FlowPrecond(VelocityOracle(x0, eps))
    torch.testing.assert_close(D(x0 + sigma[:, None] * eps, sigma), x0, rtol=1e-5, atol=1e-5)
    c_skip, c_out, c_in, c_noise = D.coefficients(sigma[:, None])
    t = sigma / (1 + sigma)
    # the network sees x_t = (1 − t)·x₀ + t·ε at c_noise = t
    torch.testing.assert_close(c_in * (x0 + sigma[:, None] * eps), (1 - t[:, None]) * x0 + t[:, None] * eps,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_noise.flatten(), t)
    assert edmlab.FlowPrecond(VelocityOracle(x0, eps), c_noise_scale=1000).coefficients(sigma)[3][1].item() == (
        pytest.approx(1000 / 3, rel=1e-6))


def test_edms_loss_with_the_flow_weighting_is_the_flow_matching_loss():
    """λ(σ)·‖D − y‖² with preconditioning=flow and λ = (1 + σ)²/σ² equals ‖V(x_t, t) − (ε − x₀)‖², transcribed
    directly (x_t = (1 − t)·x₀ + t·ε), for an arbitrary network V."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))

    def V(x, c_noise, class_labels=None, augment_labels=None):
        return net(torch.cat([x, c_noise[:, None]], 1))

    class Raw(torch.nn.Module):
        def forward(self, x, c_noise, class_labels=None, augment_labels=None):
            return V(x, c_noise)

    x0 = torch.randn(64, 3)
    eps = torch.randn(64, 3)
    sigma = edmlab.LogitNormalNoise().sample(64, generator=torch.Generator().manual_seed(3))
    loss = edmlab.DenoisingLoss(edmlab.LogitNormalNoise(), edmlab.FlowWeighting())
    ours = loss(edmlab.FlowPrecond(Raw()), x0, sigma=sigma, noise=eps).per_image
    t = (sigma / (1 + sigma))[:, None]
    flow_matching = (V((1 - t) * x0 + t * eps, t.flatten()) - (eps - x0)).square().sum(1)
    torch.testing.assert_close(ours, flow_matching, rtol=2e-4, atol=1e-5)


def test_logit_normal_is_edms_lognormal_with_p_mean_m_and_p_std_s():
    """logit t = ln σ: SD3's rf/lognorm(m, s) draws the σ's of EDM's p_train with P_mean = m, P_std = s from the
    same generator, and they equal SD3's own recipe t = sigmoid(u), σ = t/(1 − t) (transcribed in float64)."""
    ours = edmlab.LogitNormalNoise(0.5, 0.8).sample(1000, generator=torch.Generator().manual_seed(4))
    edm = edmlab.EDMNoise(P_mean=0.5, P_std=0.8).sample(1000, generator=torch.Generator().manual_seed(4))
    assert torch.equal(ours, edm)
    u = torch.randn(1000, generator=torch.Generator().manual_seed(4)).double() * 0.8 + 0.5
    t = torch.sigmoid(u)
    torch.testing.assert_close(ours.double(), t / (1 - t), rtol=1e-6, atol=0)


def test_mode_sampling_follows_sd3s_map_and_is_symmetric_in_t():
    scale = 1.29
    sigma = edmlab.ModeNoise(scale).sample(200_000, generator=torch.Generator().manual_seed(5)).double()
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = (1 - u - scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)).clamp(1e-4, 1 - 1e-4)
    torch.testing.assert_close(sigma, t / (1 - t), rtol=1e-6, atol=0)
    t_ours = sigma / (1 + sigma)
    assert abs(t_ours.mean().item() - 0.5) < 3 * t_ours.std().item() / math.sqrt(len(t_ours))  # f(1 − u) = 1 − f(u)
    assert (t_ours.sub(0.5).abs() < 0.25).float().mean() > 0.5 + 0.1  # scale > 0 favours the middle
    uniform = edmlab.ModeNoise(0.0).sample(200_000, generator=torch.Generator().manual_seed(6)).double()
    fraction = ((uniform / (1 + uniform)) < 0.3).float().mean().item()
    assert abs(fraction - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 200_000)


def test_uniform_t_is_rectified_flows_timestep_density():
    sigma = edmlab.UniformTNoise().sample(200_000, generator=torch.Generator().manual_seed(7)).double()
    t = sigma / (1 + sigma)
    for q in (0.1, 0.5, 0.9):
        assert abs((t < q).double().mean().item() - q) < 4 * math.sqrt(q * (1 - q) / len(t))
    assert t.min() >= 1e-4 - 1e-9 and t.max() <= 1 - 1e-4 + 1e-9


@pytest.mark.parametrize("make, message", [
    (lambda: edmlab.ModeNoise(2.0), r"noise_distribution.scale=2.0 must lie in \[-1, 2/\(π − 2\)"),
    (lambda: edmlab.LogitNormalNoise(0.0, 0.0), r"noise_distribution.s must be > 0, got s=0.0"),
    (lambda: edmlab.UniformTNoise(0.0, 0.5), r"need 0 < t_min < t_max < 1"),
])
def test_bad_flow_settings_name_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_family_flow_sets_the_four_training_rows_and_the_flow_ode(tmp_path):
    from conftest import compose
    from omegaconf import OmegaConf

    def chosen(*overrides):
        cfg = OmegaConf.to_container(compose("train", ["experiment=mixture", *overrides], tmp_path), resolve=False)
        return {k: cfg[k] for k in ("preconditioning", "loss_weighting", "noise_distribution")} | {
            "schedule": cfg["sampler"]["schedule"], "scaling": cfg["sampler"]["scaling"]}

    flow = chosen("family=flow")
    assert [flow[k]["_target_"] for k in ("preconditioning", "loss_weighting", "noise_distribution")] == [
        "edmlab.FlowPrecond", "edmlab.FlowWeighting", "edmlab.LogitNormalNoise"]
    assert (flow["schedule"], flow["scaling"], flow["noise_distribution"]["m"], flow["noise_distribution"]["s"]) == (
        "flow", "flow", 0.0, 1.0)
    mixed = chosen("preconditioning=edm", "noise_distribution=logit_normal")
    assert (mixed["preconditioning"]["_target_"], mixed["noise_distribution"]["_target_"]) == (
        "edmlab.EDMPrecond", "edmlab.LogitNormalNoise")


def test_flow_grid_is_uniform_in_t_and_the_shift_scales_sigma():
    from edmlab.design.discretizations import flow_sigmas

    sigmas = flow_sigmas(6, 0.002, 80.0)
    t = sigmas / (1 + sigmas)
    torch.testing.assert_close(t, torch.linspace(80 / 81, 0.002 / 1.002, 6, dtype=torch.float64), rtol=1e-13, atol=0)
    # SD3 Eq. 23: t' = αt/(1 + (α − 1)t) is σ' = α·σ
    torch.testing.assert_close(flow_sigmas(6, 0.002, 80.0, shift=3.0), 3.0 * sigmas, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"shift must be a finite number > 0 .* got shift=0"):
        edmlab.plan(discretization="flow", shift=0)


def test_euler_on_the_flow_grid_is_the_flow_matching_euler_step():
    """With schedule=flow, scaling=flow and preconditioning=flow, EDM's Euler step is diffusers'
    FlowMatchEulerDiscreteScheduler step z ← z + (t_next − t)·v(z, t), transcribed here; the last step to t = 0."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))

    class Velocity(torch.nn.Module):
        def forward(self, x, c_noise, class_labels=None, augment_labels=None):
            return net(torch.cat([x, c_noise[:, None]], 1))

    D = edmlab.FlowPrecond(Velocity())
    z = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = edmlab.sample(D, z, solver="euler", discretization="flow", schedule="flow", scaling="flow", num_steps=5,
                         shift=3.0, sigma_min=0.001, sigma_max=999.0)
    sigmas = edmlab.plan(discretization="flow", shift=3.0, num_steps=5, sigma_min=0.001, sigma_max=999.0).sigmas
    ts = (sigmas / (1 + sigmas)).tolist()
    ts[-1] = 0.0
    x = z * ts[0]
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            v = net(torch.cat([x.float(), torch.full((8, 1), t)], 1)).double()
            x = x + (t_next - t) * v
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset, base", [("cifar10_uncond_flow", "cifar10_uncond_ddpmpp"), ("digits_flow", "digits")])
def test_the_flow_presets_are_their_edm_recipe_with_the_flow_rows(preset, base, tmp_path):
    from conftest import compose
    from omegaconf import OmegaConf

    flow, edm = (OmegaConf.to_container(compose("train", [f"experiment={name}"], tmp_path), resolve=False)
                 for name in (preset, base))
    rows = ("preconditioning", "loss_weighting", "noise_distribution", "task_name", "hydra")
    assert {k: v for k, v in flow.items() if k not in (*rows, "sampler")} == {
        k: v for k, v in edm.items() if k not in (*rows, "sampler")}
    assert (flow["preconditioning"]["_target_"], flow["noise_distribution"]["_target_"]) == (
        "edmlab.FlowPrecond", "edmlab.LogitNormalNoise")
    assert (flow["sampler"]["schedule"], flow["sampler"]["scaling"]) == ("flow", "flow")
    weighting = flow["loss_weighting"].get("base", flow["loss_weighting"])
    assert weighting["_target_"] == "edmlab.FlowWeighting"
