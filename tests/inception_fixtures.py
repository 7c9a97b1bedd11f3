"""Test fixtures of the Inception detectors, outside the package: random weights in torch-fidelity's exact layout,
NVlabs-style detector files carrying them, and a one-call FID/KID/IS for the pipeline tests."""
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from edmlab.evaluation.metrics.frechet import feature_statistics
from edmlab.evaluation.metrics.inception import (fid_from_features, inception_features, inception_outputs,
                                                 inception_score_from_logits, kid_from_features)
from edmlab.evaluation.metrics.inception_weights import _unloaded_extractor
from edmlab.evaluation.metrics.nvlabs_inception import fidelity_detector


def inception_metrics(
    images_uint8: torch.Tensor | np.ndarray,
    ref_stats=None,
    ref_images: torch.Tensor | np.ndarray | None = None,
    metrics: tuple[str, ...] = ("fid",),
    weights_path: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    isc_splits: int = 10,
    fid_method: str = "sqrtm",
) -> dict[str, float]:
    """Any of ``fid`` (vs ``ref_stats`` npz/(mu, sigma), or ``ref_images``), ``kid`` (vs ``ref_images``), ``is``."""
    unknown = set(metrics) - {"fid", "kid", "is"}
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from 'fid', 'kid', 'is'")
    if "kid" in metrics and ref_images is None:
        raise ValueError("KID compares two image sets: pass ref_images (uint8 [N, C, H, W])")
    if "fid" in metrics and ref_stats is None and ref_images is None:
        raise ValueError("FID needs ref_stats (an .npz from edmlab.evaluation.metrics.ref_stats, or (mu, sigma)) or ref_images")
    out = inception_outputs(images_uint8, weights_path, batch_size, device)
    ref_pool = None
    if ref_images is not None and ("kid" in metrics or ref_stats is None):
        ref_pool = inception_features(ref_images, weights_path, batch_size, device)
    result = {}
    if "fid" in metrics:
        ref = ref_stats if ref_stats is not None else feature_statistics(ref_pool)
        result["fid"] = fid_from_features(out["pool"], ref, fid_method)
    if "kid" in metrics:
        result["kid_mean"], result["kid_std"] = kid_from_features(out["pool"], ref_pool, kid_subsets, kid_subset_size)
    if "is" in metrics:
        result["is_mean"], result["is_std"] = inception_score_from_logits(out["logits"], isc_splits)
    return result


def write_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> None:
    """Save a randomly initialised state_dict with the exact layout torch-fidelity's InceptionV3 loads.

    For offline tests of the pipeline: convolutions get Kaiming-normal (ReLU gain) weights so that activations
    neither vanish nor explode through the 90-odd layers; batch norms keep identity statistics.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _unloaded_extractor()
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), os.fspath(path))


def write_detector_pickle(archive: bytes, path: str | Path, class_name: str = "InceptionV3", key: str = "archive",
                          module_src: str = "") -> Path:
    """A ``torch_utils.persistence`` pickle of one persistent object whose state holds the TorchScript ``archive``
    under ``key``: the form :func:`inspect_detector_file` assumes for NVlabs' ``.pkl``.

    Written opcode by opcode (protocol 3): the call ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
    names NVlabs' function without importing it, ``meta`` = {type, version: 6, module_src, class_name, state}."""
    meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state={key: bytes(archive)})
    body = pickle.dumps(meta, protocol=3)  # PROTO 3, the dict, STOP
    call = b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n"  # GLOBAL
    path = Path(path)
    path.write_bytes(body[:2] + call + body[2:-1] + b"\x85R.")  # TUPLE1, REDUCE, STOP
    return path


def write_detector_files(weights_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """(``inception-fidelity.pt``, ``inception-fidelity.pkl``) in ``out_dir``: :func:`fidelity_detector` of
    ``weights_path`` as a TorchScript archive and as the persistence pickle carrying it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.jit.save(fidelity_detector(weights_path), buffer)
    pt = out_dir / "inception-fidelity.pt"
    pt.write_bytes(buffer.getvalue())
    return pt, write_detector_pickle(buffer.getvalue(), out_dir / "inception-fidelity.pkl")
