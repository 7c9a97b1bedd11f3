"""metrics.nll of src/eval.py: the held-out log-likelihood through the probability-flow ODE recorded in
metrics.json; on a bench it is the closed form's (its floor), with its options reaching the solver; bits/dim of a
digits run's held-out images; refused before sampling where no held-out data of a known range exists."""
import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import compose, train_tiny_run

from edmlab.data.points import PointsDataset
from edmlab.evaluation import evaluate
from edmlab.evaluation.scoring import NLL_SEED, held_out_data
from edmlab.evaluation.subject import Subject, bench_mixture, component
from edmlab.sampling.likelihood import log_likelihood

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

FAST = ["logger=none", "grid_images=0", "num_samples=8", "sampler.num_steps=3", "metrics.dataset=false",
        "metrics.ode_error=false"]


def eval_job(tmp_path: Path, overrides: list[str], name: str = "job") -> dict:
    return evaluate(compose("eval", [*FAST, *overrides], tmp_path / name))


def test_bench_nll_is_the_closed_form_of_the_bench_draws(tmp_path):
    """ring8, 64 draws of seed NLL_SEED: the recorded nll is −mean log_likelihood of those points over the
    sampler's σ range, and within 1e-3 of the true density's (nll_floor; measured 1.4e-5)."""
    record = eval_job(tmp_path, ["ckpt=bench:ring8", "metrics.nll.enabled=true", "metrics.nll.num_samples=64"])
    mixture = bench_mixture("ring8")
    x = mixture.sample(64, torch.Generator().manual_seed(NLL_SEED))
    assert record["nll"] == pytest.approx(-log_likelihood(mixture, x).mean().item(), rel=1e-12)
    assert record["floor"]["nll_floor"] == pytest.approx(-mixture.log_prob(x, 0.002).mean().item(), rel=1e-12)
    assert abs(record["nll"] - record["floor"]["nll_floor"]) < 1e-3
    assert record["nll_num_samples"] == 64 and record["nll_nfe"] > 6 and 0 < record["nll_sem"] < 1
    assert "bits_per_dim" not in record
    on_disk = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert on_disk["nll"] == record["nll"] and on_disk["floor"]["nll_floor"] == record["floor"]["nll_floor"]


def test_bench_nll_options_reach_the_solver_and_the_sigma_range_is_the_samplers(tmp_path):
    common = ["ckpt=bench:bimodal1d", "metrics.nll.enabled=true", "metrics.nll.num_samples=32"]
    exact = eval_job(tmp_path, common, "exact")
    # Rademacher probes are exact in 1-D; Gaussian ones are not, but unbiased: within 5 s.e. of 32 points
    rademacher = eval_job(tmp_path, [*common, "metrics.nll.divergence=hutchinson"], "rademacher")
    gaussian = eval_job(tmp_path, [*common, "metrics.nll.divergence=hutchinson", "metrics.nll.probe=gaussian",
                                   "metrics.nll.probes=2"], "gaussian")
    assert rademacher["nll"] == pytest.approx(exact["nll"], abs=1e-6)
    assert gaussian["nll"] != pytest.approx(exact["nll"], abs=1e-3)
    assert abs(gaussian["nll"] - exact["nll"]) < 5 * gaussian["nll_sem"]
    loose = eval_job(tmp_path, [*common, "metrics.nll.rtol=1e-3", "metrics.nll.atol=1e-3"], "loose")
    assert loose["nll_nfe"] < exact["nll_nfe"] / 2
    # σ_min = 0.5: log p of the data diffused to σ = 0.5, against the floor at the same σ
    wide = eval_job(tmp_path, [*common, "sampler.sigma_min=0.5"], "wide")
    x = bench_mixture("bimodal1d").sample(32, torch.Generator().manual_seed(NLL_SEED))
    assert wide["floor"]["nll_floor"] == pytest.approx(-bench_mixture("bimodal1d").log_prob(x, 0.5).mean().item())
    assert abs(wide["nll"] - wide["floor"]["nll_floor"]) < 1e-3 and wide["nll_nfe"] < exact["nll_nfe"]


def test_class_conditional_bench_scores_its_class(tmp_path):
    """class_label=3 conditions the exact denoiser on component 3: its draws, its density."""
    record = eval_job(tmp_path, ["ckpt=bench:ring8", "class_label=3", "metrics.nll.enabled=true",
                                 "metrics.nll.num_samples=32"])
    x = component(bench_mixture("ring8"), 3).sample(32, torch.Generator().manual_seed(NLL_SEED))
    floor = -component(bench_mixture("ring8"), 3).log_prob(x, 0.002).mean().item()
    assert record["floor"]["nll_floor"] == pytest.approx(floor, rel=1e-12)
    assert abs(record["nll"] - floor) < 1e-3


def test_points_held_out_split_is_scored_with_its_labels():
    dataset = PointsDataset(n=64, preset="ring8")
    mixture = dataset.mixture
    subject = Subject(mixture, (2,), 8, torch.device("cpu"), "PointsDataset", dataset, mixture)
    held = held_out_data(subject, 16, class_label=None)
    test_split = dataset.held_out()
    assert torch.equal(held.x, test_split.points[:16]) and torch.equal(held.labels, test_split.labels[:16])
    assert held.levels is None
    of_class = held_out_data(subject, 4, class_label=2)
    assert (of_class.labels == 2).all() and len(of_class.x) == min(4, int((test_split.labels == 2).sum()))


@pytest.mark.parametrize("override,message", [
    ("metrics.nll.probes=0", "metrics.nll.probes=0 must be an integer >= 1"),
    ("metrics.nll.num_samples=0", "metrics.nll.num_samples=0 must be an integer >= 1"),
    ("metrics.nll.divergence=trace", "metrics.nll.divergence='trace': choose one of exact, hutchinson"),
    ("metrics.nll.probe=sphere", "metrics.nll.probe='sphere': choose one of rademacher, gaussian"),
    ("metrics.nll.rtol=0", "metrics.nll.rtol=0 must be a number > 0"),
    ("metrics.nll.enabled=maybe", "metrics.nll.enabled='maybe' must be true or false"),
])
def test_bad_nll_settings_are_refused_in_one_line(override, message, tmp_path):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        eval_job(tmp_path, ["ckpt=bench:ring8", "metrics.nll.enabled=true", override])


def test_images_without_a_held_out_split_of_known_levels_are_refused():
    subject = Subject(lambda x, sigma: x, (3, 32, 32), 0, torch.device("cpu"), "network")
    with pytest.raises(ValueError, match=re.escape(
            "metrics.nll needs held-out data of a known range, but this network has no held-out split: use "
            "ckpt=bench:<preset>, a points run or an image run of DigitsDataset (or metrics.nll.enabled=false)")):
        held_out_data(subject, 8, None)


def test_digits_run_records_bits_per_dim_of_its_held_out_images(tmp_path):
    """A tiny trained digits network, Hutchinson's estimate on 4 held-out digits (17 levels, Δ = 1/8):
    bits_per_dim = nll/(64·ln 2) + log2(8)."""
    (tmp_path / "train").mkdir()
    run = train_tiny_run(tmp_path / "train", "duration_kimg=0.128", "callbacks.final_report.num_samples=8",
                         "sampler.num_steps=4")
    record = eval_job(tmp_path, [f"ckpt={run}", "metrics.nll.enabled=true", "metrics.nll.num_samples=4",
                                 "metrics.nll.divergence=hutchinson", "metrics.nll.rtol=1e-3",
                                 "metrics.nll.atol=1e-3"])
    assert record["status"] == "ok" and record["nll_num_samples"] == 4 and math.isfinite(record["nll"])
    assert record["bits_per_dim"] == pytest.approx(record["nll"] / (64 * math.log(2)) + 3, rel=1e-12)
    assert "nll_floor" not in record.get("floor", {})
