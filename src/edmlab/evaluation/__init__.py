"""Evaluation: ``src/eval.py`` draws samples from a trained network, or from the exact denoiser of a
Gaussian-mixture bench (``ckpt=bench:<preset>``), with any sampler; scores them; fills the job directory with
``metrics.json`` (the scores, ``nfe``, ``sample_sec`` and ``metric_sec``, ``num_samples``, a ``config`` summary,
``status`` "ok" or "failed" with ``error``, the Hydra ``overrides`` that ``edmlab.evaluation.sweep`` tabulates), samples.png
and the samples.

One concern per module:

- ``subject``: what is evaluated (a run's network and its data set, or a bench mixture);
- ``config``: the job's settings, checked before anything runs;
- ``reference``: the exact probability-flow ODE endpoints of a mixture and the sampler's error against them;
- ``scoring``: the data set's metric, Inception FID/KID/IS and EDM2's FD-DINOv2, distributed over the ranks;
- ``outputs``: metrics.json, samples.png, images/ or samples.npz, W&B;
- ``job``: the job itself, one process or torchrun's ranks.
"""
from edmlab.evaluation.job import evaluate

__all__ = ["evaluate"]
