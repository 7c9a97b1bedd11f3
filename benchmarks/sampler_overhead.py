"""The sampler's own time beside the denoiser's: an 18-step Heun run (NFE = 2N − 1 = 35) of ``edmlab.sample``
with a real network denoiser (SongUNet in EDMPrecond, EDM Eq. 7) at 32×32×3, batch 64.

- total: wall time of the whole ``edmlab.sample`` run;
- denoiser: the time spent inside its 35 denoiser calls during that run, and the same 35 calls (same σ, same
  x shape and dtype) made bare, back to back;
- overhead = total − denoiser (median over repeats of the paired difference), and, measured directly, the
  sampler run with a free denoiser D(x; σ) = x.

Medians over ``--repeats`` after a warm-up, under ``torch.inference_mode``. On CUDA every timed region, each
denoiser call included, is synchronised, so the sampler's host work cannot hide behind the network's kernels:
the overhead shown is an upper bound there. The default network (0.3 M parameters, one CPU thread) keeps the
CPU run under two minutes; the overhead's share grows as the network shrinks, so this default overstates it for
real EDM networks.

    python benchmarks/sampler_overhead.py [--device cuda] [--batch 64] [--model-channels 32] [--repeats 3]
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


def measure(denoiser, latents: torch.Tensor, num_steps: int, repeats: int, device: torch.device) -> dict:
    grid = dict(solver="heun", num_steps=num_steps, sigma_min=0.002, sigma_max=80.0)
    x_in = latents.to(torch.float64) * 80.0
    with torch.inference_mode():
        recorder = TimedDenoiser(_free_denoiser, device)
        edmlab.sample(recorder, latents, **grid)
        denoiser(x_in, recorder.sigmas[0])
        denoiser(x_in, recorder.sigmas[-1])
        rows = []
        for _ in range(repeats):
            inside = TimedDenoiser(denoiser, device)
            total = timed(lambda: edmlab.sample(inside, latents, **grid), device)
            bare = timed(lambda: [denoiser(x_in, sigma) for sigma in recorder.sigmas], device)
            free = min(timed(lambda: edmlab.sample(_free_denoiser, latents, **grid), device) for _ in range(5))
            rows.append(dict(total=total, inside=inside.seconds, bare=bare, free=free))
    median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    median["overhead_inside"] = statistics.median(r["total"] - r["inside"] for r in rows)
    median["overhead_bare"] = statistics.median(r["total"] - r["bare"] for r in rows)
    return dict(nfe=len(recorder.sigmas), median=median, rows=rows)


def table(result: dict, args, device: torch.device, params: int) -> str:
    m, nfe = result["median"], result["nfe"]
    total = m["total"]
    rows = [
        (f"total: edmlab.sample, Heun N={args.num_steps}", total),
        (f"denoiser: its {nfe} calls, timed inside the run", m["inside"]),
        ("sampler overhead = total − denoiser inside", m["overhead_inside"]),
        (f"denoiser: the same {nfe} calls, bare, back to back", m["bare"]),
        ("sampler overhead = total − bare calls", m["overhead_bare"]),
        ("sampler alone (free denoiser D = x)", m["free"]),
    ]
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} thread(s)")
    head = (f"# Sampler overhead: {args.num_steps}-step Heun ({nfe} NFE), batch {args.batch}, "
            f"{args.resolution}×{args.resolution}×{args.channels}, {device.type} ({where})\n"
            f"SongUNet model_channels={args.model_channels}, channel_mult={args.channel_mult}, "
            f"num_blocks={args.num_blocks}, attn_resolutions={args.attn_resolutions} ({params / 1e6:.2f} M params) "
            f"in EDMPrecond; medians of {args.repeats} repeats (differences paired per repeat)\n")
    lines = ["| measure | seconds | share of total |", "|---|---|---|"]
    lines += [f"| {name} | {sec:.4f} | {100 * sec / total:.2f}% |" for name, sec in rows]
    totals = ", ".join(f"{r['total']:.2f}" for r in result["rows"])
    return head + "\n" + "\n".join(lines) + f"\n\nper-repeat totals: {totals} s"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--resolution", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--channels", type=int, default=3, help="image channels (default 3)")
    parser.add_argument("--num-steps", type=int, default=18, help="Heun steps N (default 18, NFE 35)")
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
    for name in ("batch", "resolution", "channels", "num_steps", "model_channels", "num_blocks", "repeats", "threads"):
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
    result = measure(denoiser, latents, args.num_steps, args.repeats, device)
    print(table(result, args, device, params))


if __name__ == "__main__":
    main()
