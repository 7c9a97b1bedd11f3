"""Sampler accuracy on a Gaussian mixture whose probability-flow ODE is solved exactly (EDM Sec. 3, Fig. 2-3).

Error = RMS distance √(mean_k ‖x_k − x*_k‖²) between a sampler's output and the exact ODE endpoint x*_k from the
same latent z_k, i.e. from x(σ_0) = σ_0·z_k, solved by ``GaussianMixture.ode_solution`` (DOP853, tol 1e-11).

Table 1: every solver × discretization × schedule × scaling (EDM Table 1 rows) at equal cost: Heun with N steps
and Euler with 2N − 1 steps both take NFE = 2N − 1 denoiser evaluations.
Table 2: the EDM time-step exponent ρ (Eq. 5) for Heun and Euler at one small NFE (linear schedule, no scaling).

    python benchmarks/sampler_accuracy.py [--num-points 256] [--steps 4 8 16 32 64] [--csv rows.csv]
"""
import argparse
import csv
import itertools
import time
from pathlib import Path

import torch

import edmlab

SOLVERS = ("heun", "euler")
DISCRETIZATIONS = ("edm", "vp", "ve", "iddpm")
SCHEDULES = ("linear", "ve", "vp")
SCALINGS = ("none", "vp")
RHOS = (1, 2, 3, 5, 7, 10, 20, 50)


def bench_mixture() -> edmlab.GaussianMixture:
    """A smooth 2-D mixture of five unequal modes (data extent about ±1.5, per-mode std 0.25-0.4)."""
    means = [[-1.2, -0.6], [0.9, -0.9], [0.2, 1.1], [1.4, 0.8], [-0.8, 0.9]]
    stds = [0.3, 0.25, 0.35, 0.4, 0.3]
    return edmlab.GaussianMixture(means, stds, [0.25, 0.2, 0.2, 0.15, 0.2])


def steps_for_nfe(solver: str, heun_steps: int) -> int:
    """Steps giving the solver the NFE of ``heun_steps`` Heun steps (2N − 1)."""
    return heun_steps if solver == "heun" else edmlab.nfe("heun", heun_steps)


class Bench:
    """Runs ``edmlab.sample`` on fixed latents and scores it against the exact endpoint (cached per σ_0)."""

    def __init__(self, mixture, num_points: int, sigma_min: float, sigma_max: float, seed: int = 0):
        self.mixture, self.sigma_min, self.sigma_max = mixture, sigma_min, sigma_max
        generator = torch.Generator().manual_seed(seed)
        self.latents = torch.randn(num_points, mixture.dim, generator=generator, dtype=torch.float64)
        self._exact = {}

    def exact(self, sigma_0: float) -> torch.Tensor:
        key = round(sigma_0, 9)
        if key not in self._exact:
            self._exact[key] = self.mixture.ode_solution(self.latents * sigma_0, sigma_0)
        return self._exact[key]

    def error(self, **sample_kwargs) -> float:
        first = []
        x = edmlab.sample(self.mixture, self.latents, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
                          callback=lambda step: first.append(step["sigma"]) if step["i"] == 0 else None,
                          **sample_kwargs)
        return (x - self.exact(first[0])).square().sum(-1).mean().sqrt().item()


def design_space_rows(bench: Bench, heun_steps) -> list[dict]:
    rows = []
    for solver, disc, schedule, scaling in itertools.product(SOLVERS, DISCRETIZATIONS, SCHEDULES, SCALINGS):
        for n in heun_steps:
            N = steps_for_nfe(solver, n)
            err = bench.error(solver=solver, discretization=disc, schedule=schedule, scaling=scaling, num_steps=N)
            rows.append(dict(table="design_space", solver=solver, discretization=disc, schedule=schedule,
                             scaling=scaling, rho=7.0, num_steps=N, nfe=edmlab.nfe(solver, N), rms_error=err))
    return rows


def rho_rows(bench: Bench, heun_steps: int) -> list[dict]:
    rows = []
    for rho, solver in itertools.product(RHOS, SOLVERS):
        N = steps_for_nfe(solver, heun_steps)
        err = bench.error(solver=solver, discretization="edm", schedule="linear", scaling="none", num_steps=N,
                          rho=float(rho))
        rows.append(dict(table="rho", solver=solver, discretization="edm", schedule="linear", scaling="none",
                         rho=float(rho), num_steps=N, nfe=edmlab.nfe(solver, N), rms_error=err))
    return rows


def _markdown(header, lines) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def design_space_table(rows, heun_steps) -> str:
    nfes = [edmlab.nfe("heun", n) for n in heun_steps]
    cell = {(r["solver"], r["discretization"], r["schedule"], r["scaling"], r["nfe"]): r["rms_error"] for r in rows}
    keys = sorted({k[:4] for k in cell}, key=lambda k: (SOLVERS.index(k[0]), DISCRETIZATIONS.index(k[1]),
                                                        SCHEDULES.index(k[2]), SCALINGS.index(k[3])))
    header = ["solver", "discretization", "schedule", "scaling"] + [f"NFE={n}" for n in nfes]
    return _markdown(header, [list(k) + [f"{cell[k + (n,)]:.2e}" for n in nfes] for k in keys])


def rho_table(rows) -> str:
    cell = {(r["rho"], r["solver"]): r for r in rows}
    header = ["ρ"] + [f"{s} N={cell[(float(RHOS[0]), s)]['num_steps']} (NFE={cell[(float(RHOS[0]), s)]['nfe']})"
                      for s in SOLVERS]
    return _markdown(header, [[f"{rho:g}"] + [f"{cell[(float(rho), s)]['rms_error']:.2e}" for s in SOLVERS]
                              for rho in RHOS])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-points", type=_positive_int, default=256, help="latents per run (default 256)")
    parser.add_argument("--steps", type=_positive_int, nargs="+", default=[4, 8, 16, 32, 64],
                        help="Heun step counts N; Euler runs 2N − 1 steps for the same NFE (default 4 8 16 32 64)")
    parser.add_argument("--rho-steps", type=_positive_int, default=8,
                        help="Heun steps of the ρ table; Euler gets 2N − 1 (default 8, i.e. NFE 15)")
    parser.add_argument("--sigma-min", type=float, default=0.002, help="smallest noise level (default 0.002)")
    parser.add_argument("--sigma-max", type=float, default=80.0, help="largest noise level (default 80)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents (default 0)")
    parser.add_argument("--csv", type=Path, default=None, help="also write every row to this CSV file")
    args = parser.parse_args(argv)
    if not 0 < args.sigma_min < args.sigma_max:
        parser.error(f"need 0 < --sigma-min < --sigma-max, got {args.sigma_min} and {args.sigma_max}")
    if args.csv is not None and args.csv.is_dir():
        parser.error(f"--csv {args.csv} is a directory; give a file path")
    steps = sorted(set(args.steps))

    start = time.perf_counter()
    mixture = bench_mixture()
    bench = Bench(mixture, args.num_points, args.sigma_min, args.sigma_max, args.seed)
    design = design_space_rows(bench, steps)
    rhos = rho_rows(bench, args.rho_steps)
    elapsed = time.perf_counter() - start

    print(f"# Sampler accuracy: RMS distance to the exact ODE endpoint\n\n{mixture.num_components}-mode 2-D Gaussian "
          f"mixture, {args.num_points} latents (seed {args.seed}), σ ∈ [{args.sigma_min:g}, {args.sigma_max:g}]; "
          f"EDM ρ = 7 in table 1. Heun N steps and Euler 2N − 1 steps cost the same NFE.\n")
    print(design_space_table(design, steps))
    print(f"\n## ρ of the EDM time steps (linear schedule, no scaling)\n")
    print(rho_table(rhos))
    print(f"\n{len(design) + len(rhos)} runs in {elapsed:.1f} s")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(design[0]))
            writer.writeheader()
            writer.writerows(design + rhos)
        print(f"rows written to {args.csv}")


if __name__ == "__main__":
    main()
