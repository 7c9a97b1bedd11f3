"""EDM Fig. 5a: the training loss per noise level σ, from a run's CSV log (``csv/metrics.csv``).

Training logs ``loss_per_sigma/<lo>-<hi>``: the per-pixel mean of λ(σ)·‖D(y + n; σ) − y‖² over the images whose σ
fell in the bin since the previous log (``edmlab.training.module``), and with a learned weighting also
``learned_u/<lo>-<hi>``, its u(σ) at the bin's centre. A bin is drawn at the geometric mean of its edges (the two
open-ended bins one half bin-ratio past their finite edge), on a log σ axis.

- One run: the loss per σ at several points of training (``phases`` equal spans of the logged steps, each span's
  mean per bin; later spans darker), and e^{u(σ)} dashed when the weighting is learned: ``<run>/loss_per_sigma.png``.
- Several runs (e.g. the Table 2 ladder): one line per run, the last span of each.

Commands: ``python -m edmlab.cli.loss_curves <run> [<run> …] [--out FILE] [--phases K]``; at the end of training
the FinalReport callback writes the one-run figure and sends it to W&B.
"""
import csv
import math
from dataclasses import dataclass
from pathlib import Path

LOSS, LEARNED = "loss_per_sigma/", "learned_u/"
QUIET = ("hydra.", "trainer.", "callbacks.", "logger", "launcher")  # overrides left out of a run's label


@dataclass
class LossLog:
    """The per-σ columns of one run's log: bin edges, and for each logged row its step and its values per bin."""

    run: Path
    edges: list[tuple[float, float]]
    steps: list[int]
    loss: list[list[float]]      # [row][bin], nan where the bin had no image
    learned_u: list[list[float]]  # same layout; empty without a learned weighting


def _bins(header: list[str], prefix: str) -> list[tuple[str, tuple[float, float]]]:
    found = []
    for name in header:
        if name.startswith(prefix):
            lo, _, hi = name[len(prefix):].partition("-")
            found.append((name, (float(lo), float(hi))))
    return sorted(found, key=lambda item: item[1])


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_log(run: str | Path) -> LossLog:
    """The loss-per-σ log of a run directory; FileNotFoundError/ValueError name the file and the fix."""
    run = Path(run)
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: Fig. 5a reads the CSV log that training writes with logger=default or "
                                f"logger=csv (give a run directory of src/train.py)")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = list(reader)
    bins = _bins(header, LOSS)
    if not bins or "step" not in header:
        raise ValueError(f"{path} has no {LOSS}<lo>-<hi> columns: the run logged no loss per σ bin (trained for "
                         f"fewer than trainer.log_every_n_steps steps?)")
    learned = dict(_bins(header, LEARNED))
    index = {name: k for k, name in enumerate(header)}
    steps, loss, learned_u = [], [], []
    for row in rows:
        values = [_number(row[index[name]]) for name, _ in bins]
        if all(math.isnan(v) for v in values):
            continue
        steps.append(int(_number(row[index["step"]])))
        loss.append(values)
        if learned:
            learned_u.append([_number(row[index[n]]) if (n := LEARNED + name[len(LOSS):]) in learned else math.nan
                              for name, _ in bins])
    return LossLog(run, [edge for _, edge in bins], steps, loss, learned_u)


def bin_centers(edges: list[tuple[float, float]]) -> list[float]:
    """√(lo·hi) per bin; an open bin (0 or ∞ edge) sits √r past its finite edge, r the ratio of an inner bin."""
    inner = [hi / lo for lo, hi in edges if lo > 0 and math.isfinite(hi)]
    half = math.sqrt(inner[0]) if inner else 2.0
    return [math.sqrt(lo * hi) if lo > 0 and math.isfinite(hi) else (hi / half if lo <= 0 else lo * half)
            for lo, hi in edges]


def span_label(run: Path, first: int, last: int) -> str:
    """The steps of a span, in kimg when the run's config.yaml gives its batch size."""
    config = run / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        batch = OmegaConf.load(config).get("batch_size")
        if isinstance(batch, int):
            return f"{first * batch / 1000:.3g}–{last * batch / 1000:.3g} kimg"
    return f"steps {first}–{last}"


def phase_means(log: LossLog, values: list[list[float]], phases: int) -> list[tuple[int, int, list[float]]]:
    """(first step, last step, mean per bin) of ``phases`` consecutive, equal spans of the logged rows."""
    n = len(values)
    phases = max(1, min(phases, n))
    out = []
    for p in range(phases):
        rows = range(p * n // phases, (p + 1) * n // phases)
        per_bin = []
        for b in range(len(log.edges)):
            ys = [values[r][b] for r in rows if math.isfinite(values[r][b])]
            per_bin.append(sum(ys) / len(ys) if ys else math.nan)
        out.append((log.steps[rows[0]], log.steps[rows[-1]], per_bin))
    return out


def run_label(run: Path) -> str:
    """A run's overrides (its .hydra/overrides.yaml) or, without them, its directory name."""
    overrides = run / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        from omegaconf import OmegaConf

        text = " ".join(str(o) for o in OmegaConf.load(overrides) if not str(o).lstrip("+").startswith(QUIET))
        if text:
            return text if len(text) <= 60 else text[:57] + "..."
    return run.name


def _axes(title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.set_xscale("log")
    ax.set_xlabel("σ (noise level)")
    ax.set_ylabel("loss: mean λ(σ)·‖D − y‖² per pixel")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return plt, fig, ax


def _finish(plt, fig, ax, path: Path) -> Path:
    lines = [line for line in ax.get_lines()]
    ys = [y for line in lines for y in line.get_ydata() if math.isfinite(y)]
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_run(run: str | Path, path: str | Path | None = None, phases: int = 4) -> Path:
    """The one-run figure (loss per σ at ``phases`` points of training) into ``path`` (default
    ``<run>/loss_per_sigma.png``)."""
    log = read_log(run)
    plt, fig, ax = _axes(f"loss per σ during training (EDM Fig. 5a): {run_label(log.run)}")
    x = bin_centers(log.edges)
    spans = phase_means(log, log.loss, phases)
    colors = plt.get_cmap("viridis_r")
    for k, (first, last, ys) in enumerate(spans):
        ax.plot(x, ys, "o-", color=colors((k + 1) / len(spans)), label=span_label(log.run, first, last))
    if log.learned_u:
        *_, u = phase_means(log, log.learned_u, 1)[-1]
        ax.plot(x, [math.exp(v) if math.isfinite(v) else math.nan for v in u], "k--", label="e^u(σ), learned")
    return _finish(plt, fig, ax, Path(path) if path else log.run / "loss_per_sigma.png")


def plot_runs(runs: list[str | Path], path: str | Path, phases: int = 4) -> Path:
    """Several runs in one figure: each run's loss per σ over the last of ``phases`` spans of its training."""
    logs = [read_log(r) for r in runs]
    plt, fig, ax = _axes(f"loss per σ, last 1/{phases} of training (EDM Fig. 5a)")
    colors = plt.get_cmap("tab10" if len(logs) <= 10 else "tab20")
    for k, log in enumerate(logs):
        first, last, ys = phase_means(log, log.loss, phases)[-1]
        ax.plot(bin_centers(log.edges), ys, "o-", color=colors(k % colors.N),
                label=f"{run_label(log.run)} ({span_label(log.run, first, last)})")
    return _finish(plt, fig, ax, Path(path))
