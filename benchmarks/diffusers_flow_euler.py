"""edmlab's Euler on discretization=flow (schedule=flow, scaling=flow, preconditioning=flow) side by side with
diffusers' ``FlowMatchEulerDiscreteScheduler`` on the same velocity network, the same latents and the same t grid.

diffusers is given the unshifted grid t_i = linspace(t(σ_max), t(σ_min), N) as ``sigmas`` (its own default grid
starts at t = 1, σ = ∞, which an EDM sampler cannot start from) and applies its static ``shift`` to it; edmlab's
``discretization=flow`` applies ``sampler.shift`` to the same grid. The network V(z, t) is a small random MLP fed
c_noise = t (diffusers' pipelines feed the timestep 1000·t: the same t here). Prints the largest differences of the
shifted grids and of the samples after every step (diffusers steps in float32, edmlab keeps its state in float64).

    .venv/bin/python benchmarks/diffusers_flow_euler.py [--steps 4 8 28] [--shift 1 3]
"""
import argparse

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import edmlab


def velocity_network(dim: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim + 1, 64), torch.nn.SiLU(), torch.nn.Linear(64, dim))


class Velocity(torch.nn.Module):
    """F(x_in, c_noise) of edmlab's FlowPrecond: the velocity network at (z_t, t)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, c_noise, class_labels=None, augment_labels=None):
        return self.net(torch.cat([x, c_noise.reshape(-1, 1).to(x.dtype)], 1))


def compare(steps: int, shift: float, sigma_min: float, sigma_max: float, dim: int = 16, batch: int = 64) -> dict:
    net = velocity_network(dim)
    z = torch.randn(batch, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    settings = dict(discretization="flow", schedule="flow", scaling="flow", num_steps=steps, shift=shift,
                    sigma_min=sigma_min, sigma_max=sigma_max)
    trace = []
    ours = edmlab.sample(edmlab.FlowPrecond(Velocity(net)), z, solver="euler",
                         callback=lambda step: trace.append(step["x"].clone()), **settings)
    ours_t = edmlab.plan(solver="euler", **settings).t_steps  # flow time t_i (the schedule's own variable)

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    t_max, t_min = sigma_max / (1 + sigma_max), sigma_min / (1 + sigma_min)
    scheduler.set_timesteps(sigmas=torch.linspace(t_max, t_min, steps, dtype=torch.float64).tolist())
    theirs_t = scheduler.sigmas.double()
    x = (z * float(theirs_t[0])).float()
    theirs = []
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            t = timestep / scheduler.config.num_train_timesteps
            v = net(torch.cat([x, t.expand(batch, 1).to(x.dtype)], 1))
            x = scheduler.step(v, timestep, x).prev_sample
            theirs.append(x.double())
    # edmlab's callback state is x_{i+1} in flow coordinates (s(t)·x̂ = z_t), the last one the final sample
    per_step = max(float((a - b).abs().max()) for a, b in zip(trace, theirs))
    return {"steps": steps, "shift": shift, "grid": float((ours_t - theirs_t).abs().max()),
            "per_step": per_step, "final": float((ours - theirs[-1]).abs().max()),
            "scale": float(ours.abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 28])
    parser.add_argument("--shift", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--sigma-min", type=float, default=0.001)
    parser.add_argument("--sigma-max", type=float, default=999.0, help="t_max = σ_max/(1 + σ_max) = 0.999")
    args = parser.parse_args()
    print(f"# edmlab Euler on discretization=flow vs diffusers FlowMatchEulerDiscreteScheduler "
          f"(t ∈ [{args.sigma_min / (1 + args.sigma_min):.4g}, {args.sigma_max / (1 + args.sigma_max):.4g}])\n")
    print("| steps | shift | max Δt of the grids | max Δ per step | max Δ final | max |x| |")
    print("|---|---|---|---|---|---|")
    for steps in args.steps:
        for shift in args.shift:
            r = compare(steps, shift, args.sigma_min, args.sigma_max)
            print(f"| {r['steps']} | {r['shift']:g} | {r['grid']:.2e} | {r['per_step']:.2e} | {r['final']:.2e} | "
                  f"{r['scale']:.2f} |")


if __name__ == "__main__":
    main()
