"""``python -m edmlab.cli.flows``: the tutorial's picture: a 1-D bimodal mixture's densities p(x; σ(t)) over the (t, x) plane, the exact flow
curves of the probability-flow ODE (EDM Eq. 1 and 4), and the discrete steps of a few-step sampler."""
import argparse
from pathlib import Path
from edmlab.viz.flows import make_figures


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m edmlab.cli.flows", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for flows.png and warps.png (created if missing)")
    parser.add_argument("--sigma-max", type=float, default=5.0, help="largest noise level drawn (default 5)")
    parser.add_argument("--steps", type=int, default=6, help="sampler steps N (default 6)")
    parser.add_argument("--curves", type=int, default=9, help="number of starting points (default 9)")
    parser.add_argument("--rho", type=float, default=3.0,
                        help="EDM time-step exponent ρ (default 3, which suits the short range σ ≤ 5)")
    args = parser.parse_args(argv)
    if not args.sigma_max > 0.002:
        parser.error(f"--sigma-max must exceed sigma_min=0.002, got {args.sigma_max}")
    paths = make_figures(args.out, sigma_max=args.sigma_max, num_steps=args.steps, num_curves=args.curves,
                         rho=args.rho)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
