"""The sampler's own time beside the denoiser's, for every solver: ``edmlab.sample`` at an equal budget of
``--nfe`` denoiser calls (35 = EDM's 18-step Heun; the adaptive solver runs at ``--rtol`` and its calls are counted)
with a real network denoiser (SongUNet in EDMPrecond, EDM Eq. 7) at 32×32×3, batch 64.

Per solver:
- total: wall time of the whole ``edmlab.sample`` run;
- denoiser: the time spent inside its denoiser calls during that run;
- overhead = total − denoiser (median over repeats of the paired difference), its share of the denoiser time
  (the issue's bound: ≤ 3%), and, measured directly, the run with a free denoiser D(x; σ) = x.

Medians over ``--repeats`` after a warm-up, under ``torch.inference_mode``. On CUDA every timed region, each
denoiser call included, is synchronised, so the sampler's host work cannot hide behind the network's kernels:
the overhead shown is an upper bound there. The default network (0.3 M parameters, one CPU thread) keeps the
CPU run to a few minutes; the overhead's share grows as the network shrinks, so this default overstates it for
real EDM networks.

    python benchmarks/sampler_overhead.py [--device cuda] [--batch 64] [--model-channels 16] [--nfe 35]
        [--solvers heun ipndm ...] [--repeats 3]
"""
import argparse
import statistics
import time

import torch

import edmlab
from edmlab.nets import SongUNet


def build_denoiser(args, device: torch.device) -> edmlab.EDMPrecond:
    net = SongUNet(img_resolution=args.resolution, in_channels=args.channels, out_channels=args.channels,
                   model_channels=args.model_channels, channel_mult=args.channel_mult, num_blocks=args.num_blocks,
                   attn_resolutions=args.attn_resolutions, dropout=0.0)
    return edmlab.EDMPrecond(net, sigma_data=0.5).eval().to(device)


def _free_denoiser(x, sigma):
    return x


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class TimedDenoiser:
    """The denoiser with a stopwatch: sums the time of each call (synchronised on CUDA) and records its σ.
    Its supported σ range and round_sigma are the wrapped denoiser's."""

    def __init__(self, denoiser, device: torch.device):
        self.denoiser, self.device, self.seconds, self.sigmas = denoiser, device, 0.0, []

    def __getattr__(self, name):
        return getattr(self.__dict__["denoiser"], name)

    def __call__(self, x, sigma):
        self.sigmas.append(sigma)
        _sync(self.device)
        start = time.perf_counter()
        out = self.denoiser(x, sigma)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        return out


def settings(solver: str, args) -> dict:
    """The sampler arguments of one solver at the common budget."""
    if solver == "adaptive":
        return dict(solver=solver, rtol=args.rtol, atol=args.rtol, sigma_min=0.002, sigma_max=80.0)
    return dict(solver=solver, nfe=args.nfe, sigma_min=0.002, sigma_max=80.0)


def measure(denoiser, latents: torch.Tensor, kwargs: dict, repeats: int, device: torch.device) -> dict:
    with torch.inference_mode():
        warm = TimedDenoiser(denoiser, device)
        edmlab.sample(warm, latents, **kwargs)
        rows = []
        for _ in range(repeats):
            inside = TimedDenoiser(denoiser, device)
            total = timed(lambda: edmlab.sample(inside, latents, **kwargs), device)
            free = min(timed(lambda: edmlab.sample(_free_denoiser, latents, **kwargs), device) for _ in range(3))
            rows.append(dict(total=total, inside=inside.seconds, free=free))
    median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    median["overhead"] = statistics.median(r["total"] - r["inside"] for r in rows)
    return dict(nfe=len(warm.sigmas), median=median, rows=rows)


def table(results: dict, args, device: torch.device, params: int) -> str:
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} thread(s)")
    head = (f"# Sampler overhead per solver at {args.nfe} NFE (adaptive: rtol=atol={args.rtol}, NFE counted), batch "
            f"{args.batch}, {args.resolution}×{args.resolution}×{args.channels}, {device.type} ({where})\n"
            f"SongUNet model_channels={args.model_channels}, channel_mult={args.channel_mult}, "
            f"num_blocks={args.num_blocks}, attn_resolutions={args.attn_resolutions} ({params / 1e6:.2f} M params) "
            f"in EDMPrecond; medians of {args.repeats} repeats (differences paired per repeat)\n")
    lines = ["| solver | NFE | total s | denoiser s | overhead s | overhead / denoiser | free-denoiser run s |",
             "|---|---|---|---|---|---|---|"]
    for solver, result in results.items():
        m = result["median"]
        lines.append(f"| {solver} | {result['nfe']} | {m['total']:.3f} | {m['inside']:.3f} | {m['overhead']:.4f} | "
                     f"{100 * m['overhead'] / m['inside']:.2f}% | {m['free']:.4f} |")
    return head + "\n" + "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--resolution", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--channels", type=int, default=3, help="image channels (default 3)")
    parser.add_argument("--nfe", type=int, default=35, help="denoiser calls of every fixed-grid solver (default 35)")
    parser.add_argument("--rtol", type=float, default=1e-2, help="adaptive solver's rtol = atol (default 1e-2)")
    parser.add_argument("--solvers", nargs="+", default=list(edmlab.SOLVERS), choices=list(edmlab.SOLVERS),
                        help="solvers to time (default: all)")
    parser.add_argument("--model-channels", type=int, default=16, help="SongUNet model_channels (default 16)")
    parser.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 2],
                        help="SongUNet channel_mult (default 1 2 2)")
    parser.add_argument("--num-blocks", type=int, default=1, help="SongUNet blocks per level (default 1)")
    parser.add_argument("--attn-resolutions", type=int, nargs="*", default=[8],
                        help="resolutions with self-attention (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, median reported (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared CPU one thread times far more steadily)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("batch", "resolution", "channels", "nfe", "model_channels", "num_blocks", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")

    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    denoiser = build_denoiser(args, device)
    params = sum(p.numel() for p in denoiser.parameters())
    latents = torch.randn(args.batch, args.channels, args.resolution, args.resolution, device=device,
                          generator=torch.Generator(device).manual_seed(args.seed))
    if not args.rtol > 0:
        parser.error(f"--rtol must be > 0, got {args.rtol}")
    results = {}
    for solver in args.solvers:
        results[solver] = measure(denoiser, latents, settings(solver, args), args.repeats, device)
        print(f"{solver}: {results[solver]['median']}", flush=True)
    print(table(results, args, device, params))


if __name__ == "__main__":
    main()
