"""edmlab's stochastic samplers vs crowsonkb/k-diffusion's, side by side, on the same denoiser, latents and noise.

    python benchmarks/kdiffusion_side_by_side.py --kdiffusion DIR [--steps 4 8 18 50] [--etas 0 1] [--seeds 0-7]

DIR holds ``k_diffusion/sampling.py`` (a checkout, or that one file extracted from it). Only that file is loaded:
its package's ``utils`` is replaced by the one helper it calls (``append_dims``) and torchsde/torchdiffeq, when not
installed, by stubs (the samplers compared here never use them: they get an explicit ``noise_sampler``). Nothing of
k-diffusion is copied into edmlab.

For each denoiser (``mixture16``, the exact D of a 16-D Gaussian mixture, and a tiny random MLP in EDMPrecond-style
preconditioning), each solver, η and N it prints the max |x_edmlab − x_kdiffusion| over the seeds, in float64:

- the grid: k-diffusion's ``get_sigmas_karras(N, 0.002, 80, 7)`` in float64 for k-diffusion, edmlab's own EDM
  grid (``discretization=edm``) for edmlab; the max |Δσ| between them is printed;
- the latents and the noise: one ``edmlab.SeedStreams`` per side, same seeds, latents drawn first; edmlab's solver
  draws from its streams (``generator=``), k-diffusion from a ``noise_sampler`` over the other streams, so both see
  the same draws in the same order (the denoiser calls of both are counted and must equal ``edmlab.nfe``; the
  draws of each are printed: at η = 0 k-diffusion's Euler ancestral still draws, and multiplies the draw by 0).

A second table (edmlab alone) is the one intended difference at η = 0: ``dpmpp_3m_sde`` (k-diffusion's 3M SDE,
D2 weighted by φ_3) vs ``dpmpp_3m`` (2φ_3): median ‖x − x*‖ over 64 latents on mixture16 against the exact ODE
endpoint at σ_min (``GaussianMixture.ode_solution``), ``final_step=none``, and the slopes log2(e_N / e_2N).
"""
import argparse
import importlib.util
import math
import sys
import types
from pathlib import Path

import torch

import edmlab
from edmlab.data.points import make_mixture

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
# (edmlab solver, its options, k-diffusion sampler, its keywords)
PAIRS = [
    ("euler_ancestral", {}, "sample_euler_ancestral", {}),
    ("dpmpp_2m_sde", {}, "sample_dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, "sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_3m_sde", {}, "sample_dpmpp_3m_sde", {}),
    ("dpmpp_3m_sde", {"noise_scale": 0.7}, "sample_dpmpp_3m_sde", {"s_noise": 0.7}),
]


def _append_dims(x, target_dims):
    return x.reshape(x.shape + (1,) * (target_dims - x.ndim))


def load_kdiffusion_sampling(root: Path):
    """k-diffusion's ``k_diffusion/sampling.py`` as a module, with its package and missing imports stubbed."""
    source = root / "k_diffusion" / "sampling.py"
    if not source.is_file():
        raise SystemExit(f"--kdiffusion {root}: no k_diffusion/sampling.py there (extract it from a k-diffusion "
                         f"checkout: git show HEAD:k_diffusion/sampling.py)")
    for name, attribute in (("torchsde", "BrownianTree"), ("torchdiffeq", "odeint")):
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            setattr(stub, attribute, None)
            sys.modules[name] = stub
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(source.parent)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    spec = importlib.util.spec_from_file_location("k_diffusion.sampling", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyNet(torch.nn.Module):
    """A random 2-layer MLP F in EDM's preconditioning (σ_data = 0.5): D = c_skip·x + c_out·F(c_in·x, ¼ log σ)."""

    def __init__(self, dim: int = 16, width: int = 64, seed: int = 0, sigma_data: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(dim + 1, width, generator=g, dtype=torch.float64) / math.sqrt(dim + 1)
        self.w2 = torch.randn(width, dim, generator=g, dtype=torch.float64) / math.sqrt(width)
        self.sigma_data = sigma_data

    def forward(self, x, sigma):
        s = sigma.reshape(-1, 1).to(x.dtype)
        var = s**2 + self.sigma_data**2
        c_skip, c_out, c_in = self.sigma_data**2 / var, s * self.sigma_data / var.sqrt(), 1 / var.sqrt()
        h = torch.tanh(torch.cat([c_in * x, s.log() / 4], 1) @ self.w1)
        return c_skip * x + c_out * (h @ self.w2)


class Counted:
    """A denoiser or a noise source that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


class CountedStreams(edmlab.SeedStreams):
    def __init__(self, seeds):
        super().__init__(seeds)
        self.draws = 0

    def randn_like(self, x):
        self.draws += 1
        return super().randn_like(x)


def karras_float64(kd, n):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return kd.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX, RHO)
    finally:
        torch.set_default_dtype(previous)


def side_by_side(kd, denoiser, dim, seeds, solver, options, kd_name, kd_kwargs, eta, n, noise_seeds=None):
    """(max |Δx|, max |x|, NFE equal: edmlab's count, k-diffusion's and ``edmlab.nfe``, noise draws of each)."""
    ours_streams, their_streams = CountedStreams(seeds), CountedStreams(seeds)
    latents = ours_streams.randn([dim], torch.float64)
    x = their_streams.randn([dim], torch.float64)
    if noise_seeds is not None:  # the control: k-diffusion's noise from other streams
        their_streams = CountedStreams(noise_seeds)
    ours_net = Counted(denoiser)
    ours = edmlab.sample(ours_net, latents, solver=solver, num_steps=n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                         rho=RHO, eta=eta, generator=ours_streams, **options)
    sigmas = karras_float64(kd, n)
    their_net = Counted(denoiser)
    x = x * sigmas[0]
    theirs = getattr(kd, kd_name)(their_net, x, sigmas, disable=True, eta=eta,
                                  noise_sampler=lambda sigma, sigma_next: their_streams.randn_like(x), **kd_kwargs)
    same_calls = ours_net.calls == their_net.calls == edmlab.nfe(solver, n)
    return ((ours - theirs).abs().max().item(), theirs.abs().max().item(), same_calls,
            f"{ours_streams.draws}/{their_streams.draws}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kdiffusion", type=Path, required=True, help="folder with k_diffusion/sampling.py")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 18, 50], help="noise levels N")
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--seeds", default="0-7", help="a-b (inclusive)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    kd = load_kdiffusion_sampling(args.kdiffusion)
    lo, hi = (int(v) for v in args.seeds.split("-"))
    seeds = list(range(lo, hi + 1))
    grid_gap = max((karras_float64(kd, n)[:-1] - edmlab.sigma_steps(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                                                                     rho=RHO)[:-1]).abs().max().item()
                   for n in args.steps)
    mixture = make_mixture("mixture16")
    denoisers = {"mixture16": (mixture, mixture.dim), "tiny MLP": (TinyNet(16), 16)}
    print(f"# edmlab vs k-diffusion, float64, {len(seeds)} seeds, EDM grid σ ∈ [{SIGMA_MIN}, {SIGMA_MAX}], ρ = {RHO:g} "
          f"(max |Δσ| of the grids: {grid_gap:.1e})\n")
    header = ["denoiser", "solver", "η"] + [f"N={n}" for n in args.steps] + ["max abs x", "NFE equal", f"draws edmlab/k-d (N={args.steps[-1]})"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    worst = 0.0
    for (label, (denoiser, dim)) in denoisers.items():
        for solver, options, kd_name, kd_kwargs in PAIRS:
            for eta in args.etas:
                cells = [side_by_side(kd, denoiser, dim, seeds, solver, options, kd_name, kd_kwargs, eta, n)
                         for n in args.steps]
                worst = max([worst] + [c[0] for c in cells])
                name = solver + "".join(f" ({k}={v})" for k, v in options.items())
                print(f"| {label} | {name} | {eta:g} | " + " | ".join(f"{c[0]:.1e}" for c in cells)
                      + f" | {max(c[1] for c in cells):.3g} | {'yes' if all(c[2] for c in cells) else 'NO'} | {cells[-1][3]} |")
    control = side_by_side(kd, mixture, mixture.dim, seeds, "dpmpp_2m_sde", {}, "sample_dpmpp_2m_sde", {}, 1.0, 18,
                           noise_seeds=[s + 1000 for s in seeds])[0]
    print(f"\nlargest max |Δx|: {worst:.1e}; control (mixture16, dpmpp_2m_sde, η = 1, N = 18, k-diffusion's noise "
          f"from seeds + 1000, latents equal): {control:.2g}")
    print_orders(mixture)


def print_orders(mixture, levels=(8, 16, 32, 64, 128)):
    z = torch.randn(64, mixture.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = mixture.ode_solution(z * SIGMA_MAX, SIGMA_MAX, SIGMA_MIN)
    print("\n| solver (η = 0) | " + " | ".join(f"N={n}" for n in levels) + " | slopes |")
    print("|" + "---|" * (len(levels) + 2))
    for solver, options in (("dpmpp_3m", {}), ("dpmpp_3m_sde", {"eta": 0.0}), ("dpmpp_2m", {}),
                            ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"})):
        errors = [(edmlab.sample(mixture, z, solver=solver, num_steps=n, final_step="none", sigma_min=SIGMA_MIN,
                                 sigma_max=SIGMA_MAX, rho=RHO, **options) - exact).norm(dim=1).median().item()
                  for n in levels]
        slopes = ", ".join(f"{math.log2(a / b):.1f}" for a, b in zip(errors, errors[1:]))
        name = solver + "".join(f" ({k}={v})" for k, v in options.items() if k != "eta")
        print(f"| {name} | " + " | ".join(f"{e:.2e}" for e in errors) + f" | {slopes} |")


if __name__ == "__main__":
    main()
