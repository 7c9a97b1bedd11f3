"""The tutorial's picture: a 1-D bimodal mixture's densities p(x; σ(t)) over the (t, x) plane, the exact flow
curves of the probability-flow ODE (EDM Eq. 1 and 4), and the discrete steps of a few-step sampler.

Writes ``flows.png`` (t = σ: exact flow curves, Euler and Heun steps from the same starting points) and
``warps.png`` (the same ODE in the (t, x) coordinates of the vp, ve and linear schedules, EDM Table 1) into
``--out`` and prints their paths (``edmlab.viz.flows``).
"""
import sys
from pathlib import Path

from edmlab.cli.common import parser, run
from edmlab.viz.flows import make_figures


def main(argv=None) -> list[Path]:
    cli = parser(__doc__, "flows")
    cli.add_argument("--out", required=True, help="directory for flows.png and warps.png (created if missing)")
    cli.add_argument("--sigma-max", type=float, default=5.0, help="largest noise level drawn")
    cli.add_argument("--steps", type=int, default=6, help="sampler steps N")
    cli.add_argument("--curves", type=int, default=9, help="number of starting points")
    cli.add_argument("--rho", type=float, default=3.0,
                     help="EDM time-step exponent ρ (3 suits the short range σ ≤ 5)")
    args = cli.parse_args(argv)
    if not args.sigma_max > 0.002:
        cli.error(f"--sigma-max must exceed sigma_min=0.002, got {args.sigma_max}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise NotADirectoryError(f"--out {args.out} is a file: give a directory for flows.png and warps.png")
    paths = make_figures(args.out, sigma_max=args.sigma_max, num_steps=args.steps, num_curves=args.curves,
                         rho=args.rho)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    sys.exit(run(main))
