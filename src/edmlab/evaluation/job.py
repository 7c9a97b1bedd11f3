"""The evaluation job of ``src/eval.py`` (``evaluate``): load what is evaluated, draw its samples by seed, score
them, write the job directory; under torchrun, the same job split over the ranks.

Image k uses seed ``seeds + k``: one random stream per image gives its latents, its class and its churn noise, in
that order (NVlabs/edm generate.py), so an image does not depend on the batch it was drawn in, nor on the process.
Each rank decodes its samples with the subject's codec (``codec.pixels``; a latent model's VAE, the identity for
pixels) before anything else sees them: every metric, grid and saved file is made from the decoded images.

Under torchrun (WORLD_SIZE > 1, ``+launcher=torchrun``) each rank draws a contiguous share of the seeds
(``edmlab.infra.distributed``); rank 0 gathers the samples (and labels) in seed order, computes the metrics and writes
every file, so the outputs are those of one process. Work that one rank does alone, or that may fail on one rank
only, is followed by ``Ranks.agree`` before the next collective: a failure stops every rank at the same point
with an error (no rank waits forever), and in a multirun the next job's collectives still line up.
"""
import contextlib
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from edmlab.infra.jobs import failure_message, in_multirun, job_info, print_job_failure, share_the_machine
from edmlab.infra.distributed import Ranks, env_ranks, init_process_group, rank_device
from edmlab.sampling.generation import Drawn, draw
from edmlab.design.guidance import GuidedDenoiser, guided_nfe
from edmlab.evaluation.subject import load_guide
from edmlab.sampling.solvers.consistency import CONSISTENCY, NOT_A_CONSISTENCY_MODEL
from edmlab.sampling.planning import plan, sampler_keys
from edmlab.sampling.solvers import CountingDenoiser
from edmlab.infra.threads import num_threads
from edmlab.evaluation.config import check_config, config_summary, need, resolve_device
from edmlab.evaluation.outputs import log_to_wandb, save_picture, save_samples, write_json
from edmlab.evaluation.reference import ode_error
from edmlab.evaluation.scoring import (DINOv2Scores, InceptionScores, check_references, dataset_scorer,
                                       held_out_data, nll_enabled, nll_scores)
from edmlab.evaluation.subject import Subject, load_subject

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out: Path, device: torch.device, ranks: Ranks = Ranks()) -> tuple[dict | None, Path | None]:
    """Sample, score and save; return the metrics.json record and the samples.png path (rank 0; None, None on
    the other ranks)."""
    check_config(cfg)
    share_the_machine(cfg.get("threads"))
    ranks.agree(check_references, cfg.metrics)
    need(cfg.num_samples >= ranks.world, f"num_samples={cfg.num_samples} is fewer than the {ranks.world} processes: "
                                         f"ask for at least one sample per process")
    sampler_kwargs = OmegaConf.to_container(cfg.sampler, resolve=True)
    codec = OmegaConf.to_container(cfg.codec, resolve=True) if cfg.get("codec") is not None else None
    subject = ranks.agree(load_subject, str(cfg.ckpt), device, cfg.class_label, cfg.ema.std, cfg.ema.at_kimg,
                          codec=codec)
    if cfg.guide is not None or cfg.guidance != 1.0:
        need(cfg.guide is not None, f"guidance={cfg.guidance} needs guide=<run dir | network file> (autoguidance) or "
                                    f"guide=uncond (classifier-free guidance)")
        subject.denoiser = GuidedDenoiser(subject.denoiser, ranks.agree(load_guide, str(cfg.guide), subject.denoiser,
                                                                        device), cfg.guidance, cfg.guidance_interval,
                                          cfg.guidance_interval_by)
    if cfg.class_label is not None:
        need(subject.label_dim > 0, f"class_label={cfg.class_label} but {cfg.ckpt} is unconditional (label_dim 0); "
                                    f"use class_label=null")
        need(cfg.class_label < subject.label_dim,
             f"class_label={cfg.class_label} is out of range: the model has {subject.label_dim} classes (0-"
             f"{subject.label_dim - 1})")
    need(cfg.save != "png" or subject.is_image,
         f"save=png writes images, but {cfg.ckpt} makes points of shape {list(subject.shape)}; use save=npz")
    need(subject.is_image or not (cfg.metrics.fid.ref is not None or cfg.metrics.kid or cfg.metrics.isc
                                  or cfg.metrics.get("prc", False)
                                  or cfg.metrics.get("fd_dinov2", {}).get("enabled", False)),
         f"FID/KID/IS/precision-recall/FD-DINOv2 score images, but {cfg.ckpt} makes points; drop "
         f"metrics.fid.ref/kid/isc/prc and metrics.fd_dinov2.enabled")
    if nll_enabled(cfg.metrics):  # refused before sampling when the subject has no held-out data to score
        ranks.agree(held_out_data, subject, 1, cfg.class_label)
    todo = plan(denoiser=subject.denoiser, **{k: v for k, v in sampler_kwargs.items() if k in sampler_keys()})
    if todo.solver is CONSISTENCY:
        need(getattr(subject.denoiser, "boundary_sigma", None) is not None,
             f"ckpt={cfg.ckpt}: {NOT_A_CONSISTENCY_MODEL}")
    levels = todo.sigmas
    sigma_start = float(levels[0])
    lo, hi = (float(levels[-2]), sigma_start) if sampler_kwargs["discretization"] == "custom" else todo.sigma_range
    with num_threads(None if subject.is_image else 1):  # points: thousands of tiny operations
        record, drawn = measure(cfg, subject, sampler_kwargs, sigma_start, ranks)
    if not ranks.is_zero:
        return None, None
    if isinstance(subject.denoiser, GuidedDenoiser):
        record.update(guided_nfe(subject.denoiser, record["nfe"]))
    grid = save_picture(out, subject, drawn.samples, int(cfg.grid_images))
    save_samples(out, subject, drawn, str(cfg.save))
    record["config"] = config_summary(cfg, sigma_min=lo, sigma_max=hi, sigma_start=sigma_start,
                                      device=str(subject.device), model=subject.kind, label_dim=subject.label_dim,
                                      processes=ranks.world)
    return record, grid


def gather_drawn(drawn: Drawn, ranks: Ranks, latents: bool) -> Drawn | None:
    """Rank 0: the samples of all ranks in seed order (with the latents when ``latents``); None elsewhere."""
    if ranks.world == 1:
        return drawn
    gathered = [ranks.gather_rows(x) if x is not None else None
                for x in (drawn.samples, drawn.latents if latents else None, drawn.labels,
                          torch.as_tensor(drawn.seeds, dtype=torch.int64))]
    if not ranks.is_zero:
        return None
    samples, z, labels, seeds = gathered
    return Drawn(samples, z, labels, seeds.tolist())


def score_on_rank_zero(cfg: DictConfig, subject: Subject, drawn: Drawn, sampler_kwargs: dict,
                       sigma_start: float) -> tuple[dict, dict]:
    """The exact-ODE error and the data set's scores (with its floor at the same count) of the gathered samples."""
    mcfg, scores, extra = cfg.metrics, {}, {}
    ode = subject.mixture is not None and mcfg.ode_error
    if ode and sampler_kwargs.get("S_churn", 0) > 0:
        extra["notes"] = ["mixture_ode_error skipped: S_churn > 0 makes the sampler stochastic"]
    elif ode:
        scores["mixture_ode_error"] = ode_error(subject.mixture, drawn, sigma_start)
    scorer = dataset_scorer(subject, cfg.class_label) if mcfg.dataset else None
    if scorer is not None:
        scores.update(scorer(drawn.samples))
        extra["floor"] = scorer.floor(len(drawn.samples))
    if nll_enabled(mcfg):
        sigma_range = plan(denoiser=subject.denoiser,
                           **{k: v for k, v in sampler_kwargs.items() if k in sampler_keys()}).sigma_range
        nll, floor = nll_scores(mcfg.nll, subject, cfg.class_label, sigma_range, int(cfg.batch))
        scores.update(nll)
        if floor:
            extra["floor"] = {**extra.get("floor", {}), **floor}
    return scores, extra


def measure(cfg: DictConfig, subject: Subject, sampler_kwargs: dict, sigma_start: float,
            ranks: Ranks = Ranks()) -> tuple[dict | None, Drawn | None]:
    """Draw the samples of every seed range, this rank's share of each, and score them: (record without config,
    samples of the first range) on rank 0, (None, None) on the others."""
    mcfg = cfg.metrics
    inception = ranks.agree(InceptionScores, mcfg, subject.device, ranks) if subject.is_image else None
    inception = inception if inception is not None and inception.active else None
    dinov2 = ranks.agree(DINOv2Scores, mcfg, subject.device, ranks) if subject.is_image else None
    dinov2 = dinov2 if dinov2 is not None and dinov2.active else None
    feature_scorers = [s for s in (inception, dinov2) if s is not None]
    # the Fréchet distances taken over every seed range (EDM: the minimum), with the scorers that give them
    ranged = {key: scorer for key, scorer in (("fid", inception), ("fd_dinov2", dinov2))
              if scorer is not None and scorer.ref is not None}
    n, ranges = int(cfg.num_samples), int(mcfg.fid.seed_ranges)
    clock = {"sample_sec": 0.0, "metric_sec": 0.0}

    @contextlib.contextmanager
    def timed(key):
        tic = time.perf_counter()
        yield
        clock[key] += time.perf_counter() - tic

    counter = CountingDenoiser(subject.denoiser)  # the first range's calls: metrics.json's nfe per sample

    def draw_range(r: int) -> Drawn:
        with timed("sample_sec"):
            seeds = ranks.share(range(cfg.seeds + r * n, cfg.seeds + (r + 1) * n))
            drawn = ranks.agree(draw, counter if r == 0 else subject.denoiser, subject.shape, seeds, int(cfg.batch),
                                sampler_kwargs,
                                subject.device, subject.label_dim, cfg.class_label)
        if not ranks.all(bool(torch.isfinite(drawn.samples).all())):
            raise ValueError(f"the sampler produced NaN/inf samples ({sampler_kwargs['solver']}, num_steps="
                             f"{sampler_kwargs['num_steps']}, rho={sampler_kwargs['rho']}): try more steps, or check "
                             f"the checkpoint")
        with timed("sample_sec"):
            pixels = ranks.agree(subject.codec.pixels, drawn.samples, subject.device)
        return Drawn(pixels, drawn.latents, drawn.labels, drawn.seeds)

    def feature_scores(samples: torch.Tensor, first_range: bool) -> dict:
        """The scores of the feature networks (Inception, DINOv2): all of them on the first range, the Fréchet
        distances alone on the others."""
        scores = {}
        with timed("metric_sec"):
            for scorer in feature_scorers if first_range else list(dict.fromkeys(ranged.values())):
                scores.update(ranks.agree(scorer.scores, ranks.agree(scorer.outputs, samples), first_range))
        return scores

    mine = draw_range(0)
    drawn = gather_drawn(mine, ranks, latents=subject.mixture is not None and mcfg.ode_error)
    with timed("metric_sec"):
        scores, extra = ranks.agree(score_on_rank_zero, cfg, subject, drawn, sampler_kwargs, sigma_start,
                                    zero_only=True) or ({}, {})
    if feature_scorers:
        scores.update(feature_scores(mine.samples, first_range=True))
    if ranged and ranges > 1:
        later = [feature_scores(draw_range(r).samples, False) for r in range(1, ranges)]
        if ranks.is_zero:
            for key in ranged:
                per_range = [scores.get(key)] + [s.get(key) for s in later]
                scores[key], scores[f"{key}_per_range"] = min(per_range), per_range
    clock["sample_sec"] = ranks.max(clock["sample_sec"])  # the ranks sample at the same time: the slowest one's
    counted = sum(ranks.all_values(counter.evaluations)) / n
    if not ranks.is_zero:
        return None, None
    record = {"status": "ok", **scores, "nfe": int(counted) if counted == int(counted) else counted,
              "num_samples": n, **clock, **extra}
    return record, drawn


def check_same_run_dir(out: Path, ranks: Ranks) -> None:
    """Every rank composed its own config; refuse to run when their job dirs differ (a clock-stamped dir)."""
    dirs = ranks.all_values(str(out))
    other = next((d for d in dirs if d != dirs[0]), None)
    need(other is None,
         f"the {ranks.world} processes got different run dirs ({dirs[0]} on rank 0, {other} on another) because "
         f"hydra.run.dir depends on each one's clock: add +launcher=torchrun (the dir then comes from EDMLAB_RUN_DIR "
         f"or the torchrun run id, docs/scaling.md) or pin hydra.run.dir=<dir>")


def evaluate(cfg: DictConfig, catch_errors: bool | None = None) -> dict:
    """The job body of ``src/eval.py``: writes ``<paths.output_dir>/metrics.json`` and returns its record.

    A failing job records ``status: failed`` and its ``error`` there too. In a multirun (or with
    ``catch_errors=True``) it then returns that record instead of raising, so the sweep goes on and its
    report lists the failure; otherwise the error propagates (``src/eval.py`` turns it into exit code 2).
    Under torchrun every rank calls it; rank 0 alone writes files and returns the record, the others return {}
    (or the failed record: all ranks fail together, at the same point, so the next job's collectives line up).
    """
    out = Path(cfg.paths.output_dir)
    ranks = env_ranks()
    if ranks.is_zero:
        out.mkdir(parents=True, exist_ok=True)
    catch = in_multirun() if catch_errors is None else catch_errors
    try:
        device = rank_device(resolve_device(str(cfg.device)), ranks)
        init_process_group(ranks, device)
        check_same_run_dir(out, ranks)
        record, grid = run(cfg, out, device, ranks)
    except Exception as e:
        record = {"status": "failed", "error": failure_message(e), "config": config_summary(cfg), **job_info()}
        if not ranks.is_zero:
            if not catch:
                raise
            return record
        write_json(out / "metrics.json", record)
        if not catch:
            raise
        log.exception("evaluation failed")
        print_job_failure(record)
        return record
    if not ranks.is_zero:
        return {}
    record.update(job_info())
    write_json(out / "metrics.json", record)
    log_to_wandb(cfg, out, record, grid)
    shown = {k: v for k, v in record.items() if isinstance(v, float) and not k.endswith("_sec")}
    log.info("metrics: %s", shown)
    print(f"{out / 'metrics.json'}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    return record
