"""``python -m edmlab.cli.search_steps``: searched time steps: the σ grid of one solver and NFE, found on the model itself."""
import inspect
import json
import sys
from pathlib import Path
import torch
from edmlab.sampling.search_steps import search


def load_model(ckpt: str):
    """(denoiser, sample shape, label count) of a run, a network file or ``bench:<preset>``."""
    from edmlab.evaluation.subject import load_subject

    subject = load_subject(ckpt, torch.device("cpu"))
    return subject.denoiser, subject.shape, subject.label_dim


ARGS = {"ckpt": str, "solver": str, "nfe": int, "out": str, "final_step": str, "afs": str, "latents": int,
        "holdout": int, "fine": int, "teacher_substeps": int, "iters": int, "seed": int, "sigma_min": float,
        "sigma_max": float, "max_order": int}


DEFAULT_OUT = "steps.json"


HELP = ("-h", "--help")


def usage() -> str:
    """The usage text of ``--help``: what the tool does and every key=value option with its default (those of
    ``search``; ``out`` is the steps file written)."""
    defaults = {name: p.default for name, p in inspect.signature(search).parameters.items()
                if p.default is not inspect.Parameter.empty} | {"out": DEFAULT_OUT}
    options = [f"  {key}=<{kind.__name__}>  (default {'none' if defaults.get(key) is None else defaults[key]})"
               for key, kind in ARGS.items() if key != "ckpt"]
    return "\n".join(["usage: python -m edmlab.cli.search_steps ckpt=<run dir | network.pt | bench:<preset>> "
                      "[key=value ...]", "", __doc__.split("\n\n")[0], "", "options:",
                      "  ckpt=<str>  (required) a run dir of src/train.py, its network.pt, or bench:<preset>",
                      *options])


def parse(argv) -> dict:
    """key=value arguments (``ARGS``); ckpt is required; null/none for final_step/afs means unset."""
    args = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in ARGS:
            raise ValueError(f"unknown argument {item!r}: give key=value with key one of {sorted(ARGS)}")
        if value.lower() in ("null", "none", "") and key in ("final_step", "afs", "max_order"):
            args[key] = None
            continue
        try:
            args[key] = ARGS[key](value)
        except ValueError:
            raise ValueError(f"{key}={value!r} is not a {ARGS[key].__name__}") from None
    if "ckpt" not in args:
        raise ValueError("ckpt is required: ckpt=<run dir | network.pt | bench:<preset>>")
    return args


def main(argv=None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if any(item in HELP for item in argv):
        print(usage())
        return None
    args = parse(argv)
    ckpt, out = args.pop("ckpt"), Path(args.pop("out", DEFAULT_OUT))
    if out.is_dir():
        raise ValueError(f"out={out} is a directory; give a file path such as out={out / 'steps.json'}")
    denoiser, shape, label_dim = load_model(ckpt)
    record = {"model": ckpt} | search(denoiser, shape, label_dim=label_dim, log=print, **args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'grid':>13}  median ‖x − x*‖   mean ‖x − x*‖   ({record['search']['holdout']} held-out latents)")
    for name, score in record["holdout_error"].items():
        print(f"{name:>13}  {score['median']:.4g}  {score['mean']:.4g}")
    print(f"steps ({record['num_steps']} levels, final_step={record['final_step']}): "
          + ", ".join(f"{s:.4g}" for s in record["sigmas"]))
    print(f"wrote {out}: sample with discretization=custom sampler.steps={out}")
    return record


if __name__ == "__main__":
    main()
