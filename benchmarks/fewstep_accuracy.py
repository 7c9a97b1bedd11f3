"""Few-step sampling: endpoint error vs NFE for every solver × time-step grid (analytic and searched) on the 16-D
bench ``mixture16``, and digits FD vs NFE on a trained digits run. Prints markdown tables and writes a PNG plot.

Bench: ``--latents`` latents (seed 0) scored against the exact ODE endpoint (DOP853, ``GaussianMixture.ode_solution``)
by the MEDIAN ‖x − x*‖ and the mode-flip rate (the sample's most likely component differs from the exact
endpoint's); the searched grids (``edmlab.sampling.search_steps``) are tuned on ``--tune`` OTHER latents (seed 1) against a
Heun teacher. The adaptive solver's NFE follows from its tolerance (counted).

    python benchmarks/fewstep_accuracy.py [--latents 512] [--tune 256] [--nfe 4 5 6 8 10 15 20 35] [--iters 150]
        [--search-max-nfe 20] [--digits-run outputs/train/<run>] [--png fewstep.png] [--csv rows.csv]
"""
import argparse
import csv
import time
from pathlib import Path

import torch

import edmlab
from edmlab.cli.search_steps import load_model
from edmlab.sampling import search_steps
from edmlab.data.points import make_mixture

GRIDS = ("edm", "logsnr", "time_uniform")
DIGITS_CONFIGS = (("heun", "edm"), ("ipndm", "edm"), ("unipc", "logsnr"), ("ipndm", "searched"))
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def exact_endpoints(mixture, latents, cache: Path | None) -> torch.Tensor:
    if cache is not None and cache.is_file():
        saved = torch.load(cache)
        if torch.equal(saved["latents"], latents):
            return saved["exact"]
    exact = mixture.ode_solution(latents * SIGMA_MAX, SIGMA_MAX)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"latents": latents, "exact": exact}, cache)
    return exact


def flips(mixture, x, exact) -> float:
    """Fraction of samples whose most responsible component at σ = 0 differs from the exact endpoint's."""
    return float((mixture.responsibilities(x, 0.0).argmax(-1) != mixture.responsibilities(exact, 0.0).argmax(-1))
                 .double().mean())


def grid_kwargs(grid: str, searched: dict, key) -> dict:
    if grid == "searched":
        return {"discretization": "custom", "steps": searched[key]}
    return {"discretization": grid} | ({"rho": 1.0} if grid == "time_uniform" else {})


def bench_rows(args) -> list[dict]:
    mixture = make_mixture("mixture16")
    latents, _ = search_steps.draw_latents((16,), args.latents, seed=0)
    exact = exact_endpoints(mixture, latents, args.cache)
    started = time.perf_counter()
    tune = search_steps.teacher(mixture, *search_steps.draw_latents((16,), args.tune, seed=1), SIGMA_MIN, SIGMA_MAX,
                                fine=61, substeps=4)
    print(f"teacher on {args.tune} tuning latents: {time.perf_counter() - started:.1f} s", flush=True)
    rows, searched = [], {}
    for solver in [s for s in args.solvers if s != "adaptive"]:
        for nfe in args.nfe:
            try:
                levels, sampler = search_steps.sampler_options(solver, nfe, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
            except ValueError:
                continue
            grids = GRIDS + (("searched",) if nfe <= args.search_max_nfe else ())
            for grid in grids:
                begin = time.perf_counter()
                if grid == "searched":
                    searched[(solver, nfe)] = search_steps.search_grid(mixture, tune, levels, sampler, args.iters)[1]
                x = edmlab.sample(mixture, latents, nfe=nfe, **sampler, **grid_kwargs(grid, searched, (solver, nfe)))
                errors = search_steps.endpoint_errors(x, exact)
                rows.append(dict(table="bench", solver=solver, grid=grid, nfe=nfe, levels=levels,
                                 final_step=sampler["final_step"], median=float(errors.median()),
                                 mean=float(errors.mean()), flips=flips(mixture, x, exact),
                                 seconds=time.perf_counter() - begin))
            print(f"{solver} NFE {nfe}: " + ", ".join(f"{r['grid']} {r['median']:.3g}" for r in rows
                                                     if r["solver"] == solver and r["nfe"] == nfe), flush=True)
    for rtol in (1e-2, 1e-3, 1e-4) if "adaptive" in args.solvers else ():
        counter = edmlab.CountingDenoiser(mixture)
        x = edmlab.sample(counter, latents, solver="adaptive", rtol=rtol, atol=rtol)
        errors = search_steps.endpoint_errors(x, exact)
        rows.append(dict(table="bench", solver=f"adaptive rtol={rtol:g}", grid="adaptive",
                         nfe=round(counter.evaluations / len(latents), 1), levels=None, final_step="euler",
                         median=float(errors.median()), mean=float(errors.mean()), flips=flips(mixture, x, exact),
                         seconds=0.0))
    return rows


def digits_rows(args) -> list[dict]:
    from edmlab.evaluation.metrics.digits import DigitsMetric

    denoiser, shape, label_dim = load_model(str(args.digits_run))
    metric = DigitsMetric()
    latents, labels = search_steps.draw_latents(shape, args.digits_samples, seed=0, label_dim=label_dim)
    lo, hi = max(SIGMA_MIN, denoiser.sigma_min), min(SIGMA_MAX, denoiser.sigma_max)
    started = time.perf_counter()
    tune = search_steps.teacher(denoiser, *search_steps.draw_latents(shape, 128, seed=1, label_dim=label_dim), lo, hi,
                                fine=41, substeps=2)
    print(f"digits teacher: {time.perf_counter() - started:.1f} s", flush=True)
    rows, searched = [], {}
    for solver, grid in DIGITS_CONFIGS:
        for nfe in args.digits_nfe:
            try:
                levels, sampler = search_steps.sampler_options(solver, nfe, denoiser=denoiser, sigma_min=lo,
                                                               sigma_max=hi)
            except ValueError:
                continue
            if grid == "searched" and nfe > args.search_max_nfe:
                continue
            if grid == "searched":
                searched[(solver, nfe)] = search_steps.search_grid(denoiser, tune, levels, sampler,
                                                                   args.digits_iters)[1]
            x = edmlab.sample(denoiser, latents, nfe=nfe, class_labels=labels, **sampler,
                              **grid_kwargs(grid, searched, (solver, nfe)))
            fd = metric(x.float()).fd
            rows.append(dict(table="digits", solver=solver, grid=grid, nfe=nfe, levels=levels,
                             final_step=sampler["final_step"], fd=fd))
            print(f"digits {solver}/{grid} NFE {nfe}: FD {fd:.2f}", flush=True)
    return rows


def _markdown(header, lines) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])


def bench_table(rows, nfes) -> str:
    cell = {(r["solver"], r["grid"], r["nfe"]): r for r in rows if r["grid"] != "adaptive"}
    keys = list(dict.fromkeys((r["solver"], r["grid"]) for r in rows if r["grid"] != "adaptive"))
    lines = [[solver, grid] + [f"{cell[(solver, grid, n)]['median']:.3f} ({100 * cell[(solver, grid, n)]['flips']:.1f}%)"
                               if (solver, grid, n) in cell else "–" for n in nfes] for solver, grid in keys]
    return _markdown(["solver", "grid"] + [f"NFE {n}" for n in nfes], lines)


def best_table(rows, nfes, reference) -> str:
    lines = []
    for n in nfes:
        candidates = [r for r in rows if r["nfe"] == n and r["grid"] != "adaptive"]
        if candidates:
            best = min(candidates, key=lambda r: r["median"])
            lines.append([str(n), f"{best['solver']} / {best['grid']}", f"{best['median']:.4f}",
                          f"{100 * best['flips']:.1f}%", f"{best['median'] / reference['median']:.2f}"])
    return _markdown(["NFE", "best solver / grid", "median ‖x − x*‖", "flips", "÷ Heun-35 (EDM grid)"], lines)


def digits_table(rows, nfes) -> str:
    cell = {(r["solver"], r["grid"], r["nfe"]): r["fd"] for r in rows}
    keys = list(dict.fromkeys((r["solver"], r["grid"]) for r in rows))
    return _markdown(["solver", "grid"] + [f"NFE {n}" for n in nfes],
                     [[s, g] + [f"{cell[(s, g, n)]:.2f}" if (s, g, n) in cell else "–" for n in nfes]
                      for s, g in keys])


def plot(rows, digits, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [name for name, part in (("bench", rows), ("digits", digits)) if part]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    axes = dict(zip(panels, axes[0]))
    ax = axes.get("bench")
    fixed = [r for r in rows if r["grid"] != "adaptive"]
    for color, solver in zip(plt.cm.tab10.colors, dict.fromkeys(r["solver"] for r in fixed)):
        for grid, style in (("best analytic", "--"), ("searched", "-")):
            pick = [r for r in fixed if r["solver"] == solver and (r["grid"] == "searched") == (grid == "searched")]
            by_nfe = {}
            for r in pick:
                by_nfe[r["nfe"]] = min(by_nfe.get(r["nfe"], float("inf")), r["median"])
            if by_nfe and ax is not None:
                ax.plot(sorted(by_nfe), [by_nfe[n] for n in sorted(by_nfe)], style, marker="o", ms=3, color=color,
                        label=f"{solver} ({grid})")
    if ax is not None:
        reference = [r for r in rows if (r["solver"], r["grid"], r["nfe"]) == ("heun", "edm", 35)]
        for r in reference:
            ax.axhline(r["median"], color="k", lw=0.8, ls=":", label="Heun-35, EDM grid")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="median ‖x − x*‖",
               title="mixture16 bench: endpoint error vs NFE")
        ax.legend(fontsize=6, ncol=2)
    if digits:
        ax = axes["digits"]
        for solver, grid in dict.fromkeys((r["solver"], r["grid"]) for r in digits):
            pick = sorted((r["nfe"], r["fd"]) for r in digits if (r["solver"], r["grid"]) == (solver, grid))
            ax.plot(*zip(*pick), marker="o", label=f"{solver} / {grid}")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="digits FD", title="digits model: FD vs NFE")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", type=int, default=512, help="scored latents (default 512)")
    parser.add_argument("--tune", type=int, default=128, help="latents the searched grids are tuned on (default 128)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10, 15, 20, 35])
    parser.add_argument("--solvers", nargs="+", default=list(edmlab.SOLVERS), choices=list(edmlab.SOLVERS),
                        help="solvers of the bench (default: all of edmlab.SOLVERS)")
    parser.add_argument("--search-max-nfe", type=int, default=10, help="search grids up to this NFE (default 10)")
    parser.add_argument("--iters", type=int, default=60, help="Nelder–Mead evaluations per search (default 60)")
    parser.add_argument("--cache", type=Path, default=Path("outputs/bench/mixture16_exact.pt"),
                        help="cache of the exact endpoints (default outputs/bench/mixture16_exact.pt)")
    parser.add_argument("--no-bench", action="store_true", help="skip the mixture16 bench (digits only)")
    parser.add_argument("--digits-run", type=Path, default=None, help="a digits run of src/train.py (make train)")
    parser.add_argument("--digits-samples", type=int, default=300)
    parser.add_argument("--digits-nfe", type=int, nargs="+", default=[5, 8, 10, 35])
    parser.add_argument("--digits-iters", type=int, default=20)
    parser.add_argument("--png", type=Path, default=Path("outputs/bench/fewstep_accuracy.png"))
    parser.add_argument("--csv", type=Path, default=None, help="also write every row to this CSV file")
    parser.add_argument("--from-csv", type=Path, nargs="+", default=None,
                        help="print the tables and plot of earlier --csv files (e.g. runs split by --solvers)")
    args = parser.parse_args(argv)
    if min(args.latents, args.tune, args.iters) < 1:
        parser.error("--latents, --tune and --iters must be >= 1")
    if args.digits_run is not None and not args.digits_run.exists():
        parser.error(f"--digits-run {args.digits_run} does not exist; train one with make train")
    nfes = sorted(set(args.nfe))
    args.nfe = nfes
    started = time.perf_counter()
    if args.from_csv:
        rows, digits = read_rows(args.from_csv)
        nfes = sorted({r["nfe"] for r in rows if r["grid"] != "adaptive"})
    else:
        rows = [] if args.no_bench else bench_rows(args)
        digits = digits_rows(args) if args.digits_run is not None else []
    if rows:
        print_bench(rows, nfes, args)
    if digits:
        print(f"\n# Digits FD vs NFE ({args.digits_run}, {args.digits_samples} samples)\n")
        print(digits_table(digits, sorted(set(args.digits_nfe))))
    plot(rows, digits, args.png)
    print(f"\nplot written to {args.png}; {time.perf_counter() - started:.0f} s in all")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        fields = list(dict.fromkeys(k for r in rows + digits for k in r))
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows + digits)


def read_rows(paths) -> tuple[list, list]:
    """(bench rows, digits rows) of --csv files, numbers parsed."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    for r in rows:
        for key in ("nfe", "levels", "median", "mean", "flips", "seconds", "fd"):
            if r.get(key) not in (None, ""):
                r[key] = float(r[key]) if key != "nfe" or r["grid"] == "adaptive" else int(r[key])
    return [r for r in rows if r["table"] == "bench"], [r for r in rows if r["table"] == "digits"]


def print_bench(rows, nfes, args):
    reference = next((r for r in rows if (r["solver"], r["grid"], r["nfe"]) == ("heun", "edm", 35)), None)
    print(f"\n# Few-step accuracy on bench:mixture16 (8 modes, 16-D)\n\nmedian ‖x − x*‖ to the exact ODE endpoint "
          f"(mode-flip rate) on {args.latents} latents; searched grids tuned on {args.tune} other latents "
          f"({args.iters} Nelder–Mead evaluations each).\n")
    print(bench_table(rows, nfes))
    if reference is not None:
        print("\n## Best solver / grid per NFE\n")
        print(best_table(rows, nfes, reference))
    adaptive = [r for r in rows if r["grid"] == "adaptive"]
    print("\n## Adaptive (Bogacki–Shampine 3(2)), NFE counted\n")
    print(_markdown(["solver", "NFE", "median", "flips"], [[r["solver"], f"{r['nfe']:g}", f"{r['median']:.4f}",
                                                            f"{100 * r['flips']:.1f}%"] for r in adaptive]))


if __name__ == "__main__":
    main()
