"""The analytic first step (``afs``) measured: endpoint error on the 16-D bench ``mixture16`` of each multistep
solver at equal NFE without it, with D ≈ 0 at σ_max (``zero``, AMED) and with the Gaussian-data denoiser
D ≈ σ_data²/(σ² + σ_data²)·x (``gaussian``, σ_data² = the data's mean per-coordinate variance).

Error: the median over ``--latents`` latents (seed 0) of ‖x − x*‖ against the exact ODE endpoint (DOP853,
``GaussianMixture.ode_solution``); each solver ends with ``final_step=none`` at σ_min = 0.002 and spends exactly
``--nfe`` calls (``sampler.nfe``), the first of them saved by afs and spent on one more step.

    python benchmarks/afs_accuracy.py [--latents 256] [--nfe 4 5 6 8 10] [--solvers ipndm dpmpp_3m unipc]
        [--grids edm logsnr]
"""
import argparse
import itertools

import torch

import edmlab
from edmlab.data.points import make_mixture

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
AFS = (None, "zero", "gaussian")


class WithSigmaData:
    """The exact mixture denoiser, exposing σ_data for afs="gaussian"."""

    def __init__(self, mixture):
        self.mixture = mixture
        second_moment = (mixture.weights[:, None] * (mixture.stds**2 + mixture.means**2)).sum(0)
        mean = (mixture.weights[:, None] * mixture.means).sum(0)
        self.sigma_data = float((second_moment - mean**2).mean().sqrt())

    def __call__(self, x, sigma, **kwargs):
        return self.mixture(x, sigma, **kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", type=int, default=256)
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    parser.add_argument("--solvers", nargs="+", default=["ipndm", "ipndm_v", "dpmpp_3m", "unipc"],
                        choices=[s for s in edmlab.SOLVERS if s != "adaptive"])
    parser.add_argument("--grids", nargs="+", default=["edm", "logsnr"], help="discretizations (default edm logsnr)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mixture = make_mixture("mixture16")
    denoiser = WithSigmaData(mixture)
    latents = torch.randn(args.latents, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = mixture.ode_solution(latents * SIGMA_MAX, SIGMA_MAX, SIGMA_MIN)
    print(f"# Analytic first step on mixture16 ({args.latents} latents, σ_data = {denoiser.sigma_data:.3f}): median "
          f"‖x − x*‖ at σ_min, final_step=none\n")
    print("| solver | grid | afs | " + " | ".join(f"NFE {n}" for n in args.nfe) + " |")
    print("|---|---|---|" + "---|" * len(args.nfe))
    for solver, grid, afs in itertools.product(args.solvers, args.grids, AFS):
        cells = []
        for n in args.nfe:
            try:
                x = edmlab.sample(denoiser, latents, solver=solver, nfe=n, final_step="none", afs=afs,
                                  discretization=grid, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
                cells.append(f"{(x - exact).norm(dim=1).median().item():.3g}")
            except ValueError:
                cells.append("–")
        print(f"| {solver} | {grid} | {afs or 'none'} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
