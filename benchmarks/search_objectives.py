"""Tail-aware step search: searched grids under each objective of ``edmlab.sampling.search_steps`` (mean, quantile,
mse, mix) on the 16-D bench ``mixture16``, against Heun-35 on the EDM grid and the solvers on analytic grids.

Protocol of ``benchmarks/fewstep_accuracy.py``: ``--latents`` scored latents (seed 0) against the exact ODE endpoint
(DOP853, ``GaussianMixture.ode_solution``), the median and the ``--report-quantile`` quantile of ‖x − x*‖ and the
mode-flip rate (``fewstep_accuracy.flips``: the sample's most responsible component at σ = 0 differs from the exact
endpoint's); the grids are searched on ``--tune`` OTHER latents (seed 1) against the Heun teacher of
``search_steps.teacher`` (61 fine levels × 4 substeps), one shared teacher for every search.

    python benchmarks/search_objectives.py [--latents 512] [--tune 256] [--solvers ipndm unipc deis] [--nfe 8 10]
        [--objectives mean quantile mse mix] [--quantile 0.99] [--tail-weight 1] [--iters 300] [--csv rows.csv]
"""
import argparse
import csv
import sys
import time
from pathlib import Path

import edmlab
from edmlab.data.points import make_mixture
from edmlab.sampling import search_steps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewstep_accuracy import SIGMA_MAX, SIGMA_MIN, _markdown, exact_endpoints, flips, grid_kwargs  # noqa: E402

ANALYTIC = search_steps.ANALYTIC


def score(mixture, x, exact, tail) -> dict:
    """Median, ``tail`` (a quantile) and mean of ‖x − x*‖, the flip rate and the number of flipped samples."""
    errors, rate = search_steps.endpoint_errors(x, exact), flips(mixture, x, exact)
    return dict(median=float(errors.median()), tail=float(tail(errors)), mean=float(errors.mean()), flips=rate,
                flipped=round(rate * len(x)))


def rows_of(args) -> list[dict]:
    mixture = make_mixture("mixture16")
    latents, _ = search_steps.draw_latents((16,), args.latents, seed=0)
    exact = exact_endpoints(mixture, latents, args.cache)
    tail = search_steps.objective_reduction("quantile", args.report_quantile)
    started = time.perf_counter()
    tune = search_steps.teacher(mixture, *search_steps.draw_latents((16,), args.tune, seed=1), SIGMA_MIN, SIGMA_MAX,
                                fine=61, substeps=4)
    print(f"teacher on {args.tune} tuning latents: {time.perf_counter() - started:.1f} s", flush=True)
    x = edmlab.sample(mixture, latents, solver="heun", discretization="edm", nfe=35)
    rows = [dict(solver="heun", nfe=35, grid="edm", objective="–", seconds=0.0) | score(mixture, x, exact, tail)]
    for solver in args.solvers:
        for nfe in args.nfe:
            levels, sampler = search_steps.sampler_options(solver, nfe, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
            analytic = []
            for grid in ANALYTIC:
                x = edmlab.sample(mixture, latents, nfe=nfe, **sampler, **grid_kwargs(grid, {}, None))
                analytic.append(dict(solver=solver, nfe=nfe, grid=grid, objective="–", seconds=0.0)
                                | score(mixture, x, exact, tail))
            best = min(analytic, key=lambda r: r["median"])
            rows += [r for r in analytic if r["grid"] == "edm" or r is best]
            for objective in args.objectives:
                begin = time.perf_counter()
                reduce = search_steps.objective_reduction(objective, args.quantile, args.tail_weight)
                grid = search_steps.search_grid(mixture, tune, levels, sampler, args.iters, reduce)[1]
                seconds = time.perf_counter() - begin
                x = edmlab.sample(mixture, latents, nfe=nfe, **sampler, discretization="custom", steps=grid)
                rows.append(dict(solver=solver, nfe=nfe, grid="searched", objective=objective, seconds=seconds)
                            | score(mixture, x, exact, tail) | dict(sigmas=" ".join(f"{s:.6g}" for s in grid)))
                r = rows[-1]
                print(f"{solver} NFE {nfe} {objective}: median {r['median']:.4f}, q {r['tail']:.4f}, "
                      f"{r['flipped']} flips ({seconds:.1f} s)", flush=True)
    return rows


def table(rows, args) -> str:
    reference = rows[0]
    lines = [[r["solver"], str(r["nfe"]), r["grid"], r["objective"], f"{r['median']:.4f}", f"{r['tail']:.3f}",
              f"{100 * r['flips']:.1f}% ({r['flipped']})",
              "–" if r is reference else
              "yes" if r["median"] <= reference["median"] and r["flips"] <= reference["flips"] else "no"]
             for r in rows]
    return _markdown(["solver", "NFE", "grid", "search objective", "median ‖x − x*‖",
                      f"q{args.report_quantile:g} ‖x − x*‖", "flips (count)", "≤ Heun-35 on both"], lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", type=int, default=512, help="scored latents, seed 0 (default 512)")
    parser.add_argument("--tune", type=int, default=256, help="latents the grids are searched on, seed 1 (default 256)")
    parser.add_argument("--solvers", nargs="+", default=["ipndm", "unipc", "deis"], choices=list(edmlab.SOLVERS))
    parser.add_argument("--nfe", type=int, nargs="+", default=[8, 10])
    parser.add_argument("--objectives", nargs="+", default=list(search_steps.OBJECTIVES),
                        choices=search_steps.OBJECTIVES)
    parser.add_argument("--quantile", type=float, default=0.99, help="q of the quantile and mix objectives")
    parser.add_argument("--tail-weight", type=float, default=1.0, help="w of the mix objective (mean + w·quantile)")
    parser.add_argument("--report-quantile", type=float, default=0.99, help="the quantile of the table (0.99)")
    parser.add_argument("--iters", type=int, default=300, help="Nelder–Mead evaluations per search (default 300)")
    parser.add_argument("--cache", type=Path, default=Path("outputs/bench/mixture16_exact.pt"),
                        help="cache of the exact endpoints (default outputs/bench/mixture16_exact.pt)")
    parser.add_argument("--csv", type=Path, default=None, help="also write every row (and searched grid) here")
    args = parser.parse_args(argv)
    if min(args.latents, args.tune, args.iters) < 1:
        parser.error("--latents, --tune and --iters must be >= 1")
    search_steps.objective_reduction("mix", args.quantile, args.tail_weight)
    search_steps.objective_reduction("quantile", args.report_quantile)
    started = time.perf_counter()
    rows = rows_of(args)
    print(f"\n# Search objectives on bench:mixture16 ({args.latents} scored latents, grids searched on {args.tune} "
          f"other latents, {args.iters} Nelder–Mead evaluations, quantile objective q = {args.quantile:g}, mix = "
          f"mean + {args.tail_weight:g}·quantile)\n")
    print(table(rows, args))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
