"""Searched time steps: the σ grid of one solver and NFE, found on the model itself.

GITS's dynamic programme over a teacher's fine grid, refined by Nelder–Mead on the actual solver's endpoint error
(``edmlab.sampling.search_steps``), scored against the analytic grids on held-out latents. ``--objective`` is how the
per-sample errors e_k are reduced to the one number minimised: mean (1/K)Σe_k (the default), quantile Q_q(e)
(q = ``--quantile``), mse (1/K)Σe_k², or mix (1/K)Σe_k + w·Q_q(e) (w = ``--tail-weight``); the last three weigh the
tail, the samples a coarse grid sends to another mode. The steps file written to ``--out`` records it under
``search.objective`` and samples with ``src/eval.py discretization=custom sampler.steps=<file>``. An unknown bench, a
run that is not there or an NFE the solver cannot spend exactly is one line ``error: ...`` with exit code 2.
"""
import inspect
import json
import sys
from pathlib import Path

import torch

from edmlab.cli.common import parser, run
from edmlab.sampling.search_steps import OBJECTIVES, search

DEFAULTS = {name: p.default for name, p in inspect.signature(search).parameters.items()
            if p.default is not inspect.Parameter.empty}
FINAL_STEPS = ("euler", "denoise", "none")
AFS = ("zero", "gaussian", "none")


def load_model(ckpt: str):
    """(denoiser, sample shape, label count) of a run, a network file or ``bench:<preset>``."""
    from edmlab.evaluation.subject import load_subject

    subject = load_subject(ckpt, torch.device("cpu"))
    return subject.denoiser, subject.shape, subject.label_dim


def build_parser():
    """The command line; every option's default is ``search``'s own."""
    cli = parser(__doc__, "search_steps")
    cli.add_argument("ckpt", help="a run dir of src/train.py, its network.pt, or bench:<preset>")
    cli.add_argument("--solver", default=DEFAULTS["solver"], help="the solver the grid is for")
    cli.add_argument("--nfe", type=int, default=DEFAULTS["nfe"], help="denoiser calls per sample")
    cli.add_argument("--out", default="steps.json", help="the steps file to write")
    cli.add_argument("--final-step", choices=FINAL_STEPS, default=DEFAULTS["final_step"],
                     help="the step to σ = 0 (default: euler, or none where only that spends exactly --nfe)")
    cli.add_argument("--afs", choices=AFS, default=DEFAULTS["afs"],
                     help="analytic first step: zero (D ≈ 0, AMED) or gaussian (default: none)")
    cli.add_argument("--latents", type=int, default=DEFAULTS["latents"], help="tuning latents of the teacher")
    cli.add_argument("--holdout", type=int, default=DEFAULTS["holdout"], help="held-out latents of the scores")
    cli.add_argument("--fine", type=int, default=DEFAULTS["fine"], help="levels of the teacher's fine grid")
    cli.add_argument("--teacher-substeps", type=int, default=DEFAULTS["teacher_substeps"],
                     help="Heun steps of the teacher per fine interval")
    cli.add_argument("--iters", type=int, default=DEFAULTS["iters"], help="Nelder–Mead iterations")
    cli.add_argument("--objective", choices=OBJECTIVES, default=DEFAULTS["objective"],
                     help="the reduction of the per-sample endpoint errors that the search minimises")
    cli.add_argument("--quantile", type=float, default=DEFAULTS["quantile"],
                     help="q of the quantile and mix objectives, in (0, 1)")
    cli.add_argument("--tail-weight", type=float, default=DEFAULTS["tail_weight"],
                     help="w of the mix objective (mean + w·quantile), >= 0")
    cli.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed of the tuning latents")
    cli.add_argument("--sigma-min", type=float, default=DEFAULTS["sigma_min"],
                     help="smallest noise level (raised to the network's own)")
    cli.add_argument("--sigma-max", type=float, default=DEFAULTS["sigma_max"],
                     help="largest noise level (lowered to the network's own)")
    cli.add_argument("--max-order", type=int, default=DEFAULTS["max_order"],
                     help="order cap of a multistep solver (default: the solver's own)")
    return cli


def main(argv=None) -> dict:
    """Search and write the steps file; returns its record."""
    args = vars(build_parser().parse_args(argv))
    ckpt, out = args.pop("ckpt"), Path(args.pop("out"))
    if args["afs"] == "none":
        args["afs"] = None
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file path such as --out {out / 'steps.json'}")
    denoiser, shape, label_dim = load_model(ckpt)
    record = {"model": ckpt} | search(denoiser, shape, label_dim=label_dim, log=print, **args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    objective = record["search"]["objective"]["name"]
    print(f"{'grid':>13}  median ‖x − x*‖   mean ‖x − x*‖   {objective} objective   "
          f"({record['search']['holdout']} held-out latents)")
    for name, score in record["holdout_error"].items():
        print(f"{name:>13}  {score['median']:.4g}  {score['mean']:.4g}  {score['objective']:.4g}")
    print(f"steps ({record['num_steps']} levels, final_step={record['final_step']}): "
          + ", ".join(f"{s:.4g}" for s in record["sigmas"]))
    print(f"wrote {out}: sample with discretization=custom sampler.steps={out}")
    return record


if __name__ == "__main__":
    sys.exit(run(main))
