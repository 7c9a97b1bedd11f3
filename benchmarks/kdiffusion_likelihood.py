"""edmlab's ``log_likelihood`` vs k-diffusion's, side by side, against the closed form, on the exact denoiser of
Gaussian mixtures (1-D, 2-D, 3-D).

    pip install torchdiffeq   # what k-diffusion's log_likelihood solves with (dopri5)
    python benchmarks/kdiffusion_likelihood.py --k-diffusion /path/to/k-diffusion [--points 64] [--tols 1e-4,1e-5,1e-7]

The same denoiser (``GaussianMixture``'s posterior mean), the same points (draws of each mixture), the same range
σ_min = 0.002 → σ_max = 80 and the same prior N(0, σ_max² I). Printed as a markdown table per tolerance
(rtol = atol), max |Δ log p| over the points (nats):

- ``edmlab − closed``: edmlab's exact-divergence log p minus log p(x; σ_min) of the mixture (closed form);
- ``edmlab exact tail − closed``: the same ODE with the mixture's own p(·; σ_max) as the tail, i.e. the solver's
  error alone (the row above adds the Gaussian tail's);
- ``k-diff − closed``: k-diffusion's ``log_likelihood`` made exact by averaging its Hutchinson estimate over the
  2^(d−1) Rademacher probes with v₁ = +1 (the off-diagonal terms of vᵀJv cancel in that average, so it is tr J);
  each probe is one call, fed to it as its ``torch.randint_like`` draw;
- ``k-diff 1 probe − closed``: k-diffusion as it is, one random Rademacher probe (its own estimate);
- ``edmlab − k-diff``: the two exact values against each other; and each one's denoiser calls per point.

Then Hutchinson's estimate on 3 points of the 3-D mixture, each repeated ``--replicates`` times with its own
probes (rtol = atol = 1e-5): the mean − the exact value in standard errors, and the s.d. of one estimate for
K = 1, 4, 16 probes of each kind, beside k-diffusion's (one Rademacher probe per row, as it draws them).

k-diffusion's ``sampling.py`` and ``utils.py`` are loaded from the checkout as modules of a bare ``k_diffusion``
package (its ``__init__`` imports the training stack); ``torchsde`` (its SDE noise, unused here) is stubbed when
absent. Nothing of k-diffusion is copied into edmlab.
"""
import argparse
import importlib.util
import itertools
import sys
import time
import types
from pathlib import Path

import torch

from edmlab.data.mixture import GaussianMixture
from edmlab.data.points import PRESETS
from edmlab.sampling.likelihood import gaussian_log_prob, log_likelihood, ode_to_noise

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
MIXTURE_3D = dict(means=[[1.0, 0.5, -0.3], [-0.8, 0.2, 0.9], [0.1, -1.0, 0.4]],
                  stds=[[0.3, 0.15, 0.2], [0.1, 0.25, 0.2], [0.2, 0.2, 0.4]], weights=[0.5, 0.3, 0.2])
BENCHES = {"bimodal1d (1-D)": lambda: GaussianMixture(**PRESETS["bimodal1d"]()),
           "ring8 (2-D)": lambda: GaussianMixture(**PRESETS["ring8"]()),
           "3-component (3-D)": lambda: GaussianMixture(**MIXTURE_3D)}


def kdiffusion_sampling(root: Path):
    """k-diffusion's ``sampling`` module, imported from the checkout ``root`` without its package ``__init__``."""
    source = root / "k_diffusion"
    if not (source / "sampling.py").is_file():
        raise FileNotFoundError(f"{root} is not a k-diffusion checkout (no k_diffusion/sampling.py); git clone "
                                f"https://github.com/crowsonkb/k-diffusion and pass its path as --k-diffusion")
    if importlib.util.find_spec("torchsde") is None:
        sys.modules["torchsde"] = types.ModuleType("torchsde")
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(source)]
    sys.modules["k_diffusion"] = package
    for name in ("utils", "sampling"):
        spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", source / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        setattr(package, name, module)
    return package.sampling


class FixedProbe(types.ModuleType):
    """``torch`` as k-diffusion's sampling module sees it, with ``randint_like`` returning a chosen {0, 1} probe
    (k-diffusion maps it to v = 2·probe − 1)."""

    def __init__(self, signs: torch.Tensor):
        super().__init__("torch")
        self.signs = signs

    def __getattr__(self, name):
        return getattr(torch, name)

    def randint_like(self, x, high):
        return ((self.signs + 1) / 2).to(x.dtype).expand_as(x).clone()


def kdiffusion_log_p(sampling, mixture: GaussianMixture, x: torch.Tensor, tol: float, signs=None):
    """(log p, calls per point) of k-diffusion's ``log_likelihood``: its own random probe, or the probe ``signs``."""
    if signs is not None:
        sampling.torch = FixedProbe(signs)
    try:
        log_p, info = sampling.log_likelihood(mixture, x, SIGMA_MIN, SIGMA_MAX, atol=tol, rtol=tol)
    finally:
        sampling.torch = torch
    return log_p, info["fevals"]


def kdiffusion_exact(sampling, mixture: GaussianMixture, x: torch.Tensor, tol: float):
    """k-diffusion's log p with tr J: its estimate averaged over the 2^(d−1) sign patterns with v₁ = +1."""
    patterns = [torch.tensor((1.0, *rest), dtype=x.dtype) for rest in itertools.product((1.0, -1.0),
                                                                                        repeat=x.shape[1] - 1)]
    runs = [kdiffusion_log_p(sampling, mixture, x, tol, signs) for signs in patterns]
    return torch.stack([r[0] for r in runs]).mean(0), sum(r[1] for r in runs) / len(runs)


def compare(sampling, name: str, mixture: GaussianMixture, points: int, tol: float) -> dict:
    x = mixture.sample(points, torch.Generator().manual_seed(0))
    closed = mixture.log_prob(x, SIGMA_MIN)
    tic = time.perf_counter()
    flow = ode_to_noise(mixture, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rtol=tol, atol=tol)
    edmlab_sec = time.perf_counter() - tic
    ours = gaussian_log_prob(flow.latent, SIGMA_MAX) + flow.integral
    exact_tail = mixture.log_prob(flow.latent, SIGMA_MAX) + flow.integral
    tic = time.perf_counter()
    theirs, their_calls = kdiffusion_exact(sampling, mixture, x, tol)
    kdiff_sec = time.perf_counter() - tic
    torch.manual_seed(1)
    one_probe, _ = kdiffusion_log_p(sampling, mixture, x, tol)
    worst = lambda d: f"{d.abs().max().item():.2e}"
    return {"mixture": name, "edmlab − closed": worst(ours - closed),
            "edmlab exact tail − closed": worst(exact_tail - closed), "k-diff − closed": worst(theirs - closed),
            "k-diff 1 probe − closed": worst(one_probe - closed), "edmlab − k-diff": worst(ours - theirs),
            "edmlab NFE": f"{flow.nfe.double().mean().item():.0f}", "k-diff NFE": f"{their_calls:.0f}",
            "edmlab s": f"{edmlab_sec:.2f}", "k-diff s (all probes)": f"{kdiff_sec:.2f}"}


def hutchinson_spread(sampling, replicates: int) -> list[dict]:
    """Rows of (estimator, K, mean − exact in s.e., s.d.) per point of the 3-D mixture."""
    mixture = BENCHES["3-component (3-D)"]()
    x = mixture.sample(3, torch.Generator().manual_seed(1))
    exact = log_likelihood(mixture, x)
    rows = x.repeat_interleave(replicates, 0)

    def row(name, probes, estimates):
        estimates = estimates.view(len(x), replicates)
        sd = estimates.std(1)
        z = (estimates.mean(1) - exact) / (sd / replicates**0.5)
        return {"estimator": name, "K": probes, "(mean − exact)/s.e.": ", ".join(f"{v:+.2f}" for v in z),
                "s.d. of one estimate (nats)": ", ".join(f"{v:.3f}" for v in sd)}

    out = []
    for probe in ("rademacher", "gaussian"):
        for probes in (1, 4, 16):
            est = log_likelihood(mixture, rows, divergence="hutchinson", probes=probes, probe=probe,
                                 generator=torch.Generator().manual_seed(probes))
            out.append(row(f"edmlab {probe}", probes, est))
    torch.manual_seed(0)
    out.append(row("k-diffusion rademacher", 1, kdiffusion_log_p(sampling, mixture, rows, 1e-5)[0]))
    return out


def markdown(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[k]) for k in header) + " |" for r in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k-diffusion", type=Path, required=True, help="a crowsonkb/k-diffusion checkout")
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--tols", default="1e-4,1e-5,1e-7", help="rtol = atol values, comma-separated")
    parser.add_argument("--replicates", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sampling = kdiffusion_sampling(args.k_diffusion)
    for tol in (float(t) for t in args.tols.split(",")):
        rows = [compare(sampling, name, make(), args.points, tol) for name, make in BENCHES.items()]
        print(f"\nrtol = atol = {tol:g}, {args.points} points, σ {SIGMA_MIN} → {SIGMA_MAX}, max |Δ log p| (nats)\n")
        print(markdown(rows))
    print(f"\nHutchinson on 3 points of the 3-D mixture, {args.replicates} replicates each, rtol = atol = 1e-5\n")
    print(markdown(hutchinson_spread(sampling, args.replicates)))


if __name__ == "__main__":
    main()
