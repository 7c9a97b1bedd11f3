"""Few steps by training vs by solving: a denoising run sampled with Heun-35 and with the best 2- and 4-NFE ODE
solvers, against consistency runs (objective=ect tuned from it, objective=ict from scratch) at 1 and 2 steps.

    python benchmarks/consistency_fewstep.py --base RUN --consistency ect=RUN ict=RUN [--samples 297] [--seeds 3]

Each cell is the data set's metric of ``src/eval.py`` (digits: FD against the 297 held-out digits; mixture points:
sliced Wasserstein to the true mixture), mean ± standard error over ``--seeds`` sample sets (seeds 0, 100000, …).
The "best" ODE solver at an NFE is the one of ``SOLVERS`` × afs ∈ {none, zero} with the lowest mean, chosen on the
same seeds (so slightly favoured). Consistency runs are sampled on the EDM grid (``sampler.nfe``) and, at 2 steps,
also at the intermediate σ of ``--mid`` (ECT's CIFAR-10 value 0.821 by default).
"""
import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ("euler", "ipndm", "dpmpp_2m", "unipc", "deis")
METRICS = ("digits_fd", "mixture_sliced_wasserstein")


def evaluate(ckpt: str, overrides: list[str], seeds: int, samples: int, out: Path) -> tuple[float, float] | None:
    """(mean, s.e.) of the data set's metric over ``seeds`` sample sets, or None when the setting is refused."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from edmlab.evaluation import evaluate as run_eval

    values = []
    for k in range(seeds):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("eval", overrides=[f"ckpt={ckpt}", f"num_samples={samples}", f"seeds={100000 * k}",
                                             "logger=none", "threads=1", "metrics.ode_error=false", *overrides],
                          return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out / f"{len(list(out.iterdir()))}")
        try:
            record = run_eval(cfg, catch_errors=False)
        except ValueError:
            return None
        values.append(next(record[m] for m in METRICS if m in record))
    mean = sum(values) / len(values)
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) if len(values) > 1 else 0
    return mean, se


def cell(result) -> str:
    return "refused" if result is None else f"{result[0]:.4g} ± {result[1]:.2g}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="the denoising run (sampled with ODE solvers); omitted: consistency rows only")
    parser.add_argument("--consistency", nargs="+", default=[], metavar="NAME=RUN", help="consistency runs")
    parser.add_argument("--samples", type=int, default=297)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mid", type=float, default=0.821, help="the intermediate σ of the 2-step custom grid")
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="the ODE solvers tried for the base run")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    sys.path.insert(0, str(ROOT / "src"))
    out = Path(tempfile.mkdtemp(prefix="consistency_fewstep_"))
    rows = []
    if args.base:
        rows.append(("denoising", "heun, EDM grid", 35, evaluate(args.base, ["solver=heun", "sampler.num_steps=18"],
                                                                  args.seeds, args.samples, out)))
    for nfe in (2, 4) if args.base else ():
        tried = {}
        for solver in args.solvers.split(","):
            for afs in ("null", "zero"):
                tried[(solver, afs)] = evaluate(args.base, [f"solver={solver}", "sampler.num_steps=null",
                                                            f"sampler.nfe={nfe}", f"sampler.afs={afs}"],
                                                args.seeds, args.samples, out)
                print(f"  base {solver} afs={afs} nfe={nfe}: {cell(tried[(solver, afs)])}", flush=True)
        (solver, afs), best = min(((k, v) for k, v in tried.items() if v is not None), key=lambda kv: kv[1][0])
        rows.append(("denoising", f"best ODE: {solver}{', afs=zero' if afs == 'zero' else ''}", nfe, best))
    for item in args.consistency:
        name, run = item.split("=", 1)
        for nfe in (1, 2):
            rows.append((name, "consistency, EDM grid", nfe,
                         evaluate(run, ["solver=consistency", "sampler.num_steps=null", f"sampler.nfe={nfe}"],
                                  args.seeds, args.samples, out)))
        rows.append((name, f"consistency, σ_mid = {args.mid}", 2,
                     evaluate(run, ["solver=consistency", "discretization=custom",
                                    f"sampler.steps=[80,{args.mid},0.002]"], args.seeds, args.samples, out)))
    print(f"\n{args.samples} samples, {args.seeds} seeds, mean ± s.e.\n")
    print("| model | sampler | NFE | metric |\n|---|---|---:|---:|")
    for model, sampler, nfe, result in rows:
        print(f"| {model} | {sampler} | {nfe} | {cell(result)} |")


if __name__ == "__main__":
    main()
