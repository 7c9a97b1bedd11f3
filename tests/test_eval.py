"""Evaluation (src/eval.py, edmlab.evaluation, edmlab.evaluation.sweep): sweeps that end in a table and plots, failed jobs kept in
the table, seeds that fix the images whatever the batch, the exact Gaussian-mixture bench measuring the solvers'
orders of accuracy, digits metrics of a trained network, FID over seed ranges, and bad checkpoints."""
import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose, run_script, train_tiny_run

from edmlab.evaluation import evaluate


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny digits network trained for 4 steps by the real entry point (its run directory)."""
    return train_tiny_run(tmp_path_factory.mktemp("train"), "duration_kimg=0.128", "callbacks.final_report.num_samples=8",
                          "sampler.num_steps=4")


def eval_job(tmp_path: Path, overrides: list[str], name: str = "job") -> dict:
    cfg = compose("eval", ["logger=none", "grid_images=0", *overrides], tmp_path / name)
    return evaluate(cfg)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------- sweeps


def test_two_by_two_sweep_gives_four_jobs_one_table_and_the_nfe_plot(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script("eval.py", ["-m", "ckpt=bench:ring8", "solver=euler,heun", "sampler.num_steps=4,8",
                                    "num_samples=128", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 4
    records = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert all(r["status"] == "ok" and math.isfinite(r["mixture_ode_error"]) for r in records)
    assert all(list(job.glob("wandb/offline-run-*")) for job in jobs)  # W&B offline, no login

    rows = read_csv(sweep / "sweep.csv")
    assert len(rows) == 4
    header = list(rows[0])
    assert header.index("solver") < header.index("mixture_ode_error") < header.index("nfe") < header.index("status")
    # NFE: N for Euler, 2N − 1 for Heun (the last step to σ = 0 is an Euler step)
    assert {(r["solver"], int(r["sampler.num_steps"])): int(r["nfe"]) for r in rows} == {
        ("euler", 4): 4, ("euler", 8): 8, ("heun", 4): 7, ("heun", 8): 15}
    for row, record in zip(rows, records):
        assert float(row["mixture_ode_error"]) == record["mixture_ode_error"] and row["status"] == "ok"

    table = (sweep / "sweep.md").read_text()
    long_table = table.split("\n## Jobs\n")[1]
    assert sum(line.startswith("| ") for line in long_table.splitlines()) == 1 + 4 and "mixture_ode_error" in table
    assert (sweep / "mixture_ode_error_vs_nfe.png").is_file()
    assert not (sweep / "mixture_ode_error_vs_rho.png").exists()  # ρ did not vary
    assert list(sweep.glob("wandb/offline-run-*"))


def test_a_failed_job_is_a_row_and_the_others_are_kept(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script("eval.py", ["-m", "ckpt=bench:ring8", "sampler.rho=7,-1", "num_samples=64", "logger=none",
                                    "metrics.ode_error=false", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 1
    assert "1 failed" in result.stdout and "rho=-1" in result.stderr
    good, bad = read_csv(sweep / "sweep.csv")
    assert (good["sampler.rho"], good["status"], good["nfe"]) == ("7", "ok", "35")
    assert float(good["mixture_sliced_wasserstein"]) > 0
    assert (bad["sampler.rho"], bad["status"], bad["mixture_sliced_wasserstein"]) == ("-1", "failed", "")
    assert "rho must be > 0" in bad["error"]
    (failed_dir,) = [p for p in sweep.iterdir() if p.name.startswith("1_")]
    assert json.loads((failed_dir / "metrics.json").read_text())["status"] == "failed"
    assert "| failed |" in (sweep / "sweep.md").read_text()


# ---------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("ckpt", ["digits", "bench:ring8"])
def test_seeds_fix_the_samples_whatever_the_batch(ckpt, tmp_path, request):
    """Image k comes from seed k's own stream (latents, then churn noise at every step): batches of 1, 5 and 16
    give bit-identical samples, and starting at seed 5 gives the tail of the run that starts at 0."""
    ckpt = str(request.getfixturevalue("digits_run")) if ckpt == "digits" else ckpt
    common = [f"ckpt={ckpt}", "save=npz", "metrics.dataset=false", "metrics.ode_error=false",
              "sampler.num_steps=5", "sampler.S_churn=10"]
    runs = {}
    for batch, seeds, n in ((1, 0, 16), (5, 0, 16), (16, 0, 16), (4, 5, 11)):
        name = f"b{batch}s{seeds}"
        eval_job(tmp_path, [*common, f"batch={batch}", f"seeds={seeds}", f"num_samples={n}"], name)
        with np.load(tmp_path / name / "samples.npz") as z:
            runs[name] = {k: z[k] for k in z.files}
    key = "images" if ckpt != "bench:ring8" else "samples"
    assert runs["b1s0"][key].dtype == (np.uint8 if key == "images" else np.float64)
    for name in ("b5s0", "b16s0"):
        np.testing.assert_array_equal(runs[name][key], runs["b1s0"][key])
    np.testing.assert_array_equal(runs["b4s5"]["seeds"], np.arange(5, 16))
    np.testing.assert_array_equal(runs["b4s5"][key], runs["b1s0"][key][5:])
    assert len(np.unique(runs["b1s0"][key].reshape(16, -1), axis=0)) == 16


# ---------------------------------------------------------------------------------------------- exact bench


def ode_errors(tmp_path, solver, steps, rho=7, preset="ring8"):
    return [eval_job(tmp_path, [f"ckpt=bench:{preset}", f"solver={solver}", f"sampler.num_steps={n}",
                                f"sampler.rho={rho}", "num_samples=128", "metrics.dataset=false"],
                     f"{solver}{n}rho{rho}")["mixture_ode_error"] for n in steps]


def orders(errors):
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


def test_exact_bench_measures_euler_first_order_and_heun_second_order(tmp_path):
    """Against the exact ODE endpoints: halving the steps divides Euler's error by ~2 and Heun's by ~4, so at equal
    NFE (Euler N' = 2N − 1) Heun wins once the steps resolve the modes (NFE ≥ 63 on ring8)."""
    heun = ode_errors(tmp_path, "heun", [16, 32, 64, 128])
    euler = ode_errors(tmp_path, "euler", [31, 63, 127, 255])
    assert all(a > b for a, b in zip(heun, heun[1:])) and all(a > b for a, b in zip(euler, euler[1:]))
    assert 1.8 < orders(heun)[-1] < 2.4 and 0.9 < orders(euler)[-1] < 1.15
    assert all(h < e for h, e in zip(heun[1:], euler[1:]))  # equal NFE 63, 127, 255
    assert heun[-1] < 1e-3


def test_exact_bench_rho_seven_beats_uniform_steps(tmp_path):
    """EDM Eq. 5: ρ = 1 spaces σ uniformly and wastes the steps at high noise; ρ = 7 is > 10× more accurate."""
    by_rho = {rho: ode_errors(tmp_path, "heun", [8], rho=rho)[0] for rho in (1, 3, 7)}
    assert by_rho[7] < by_rho[3] < by_rho[1] and by_rho[7] < by_rho[1] / 10


def test_one_dimensional_bench_and_class_conditional_bench(tmp_path):
    errors = ode_errors(tmp_path, "heun", [16, 32, 64], preset="bimodal1d")
    assert all(a > b for a, b in zip(errors, errors[1:])) and 1.8 < orders(errors)[-1] < 2.6
    # one-hot class k conditions the exact denoiser on component k: samples gather around its mean μ_k
    record = eval_job(tmp_path, ["ckpt=bench:ring8", "class_label=3", "sampler.num_steps=32", "save=npz"], "cond")
    with np.load(tmp_path / "cond" / "samples.npz") as z:
        samples, labels = z["samples"], z["labels"]
    mu_3 = np.array([math.cos(3 * math.pi / 4), math.sin(3 * math.pi / 4)])
    assert (labels == 3).all() and np.abs(samples.mean(0) - mu_3).max() < 0.05
    assert record["mixture_ode_error"] < 0.02 and record["config"]["label_dim"] == 8


# ---------------------------------------------------------------------------------------------- trained networks


def test_digits_checkpoint_gets_digits_metrics_and_the_real_floor(digits_run, tmp_path):
    result = run_script("eval.py", [f"ckpt={digits_run}", "num_samples=32", "sampler.num_steps=4", "save=png"],
                        tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = list((tmp_path / "outputs" / "eval").iterdir())
    record = json.loads((job / "metrics.json").read_text())
    assert record["status"] == "ok" and record["nfe"] == 7 and record["num_samples"] == 32
    assert math.isfinite(record["digits_fd"]) and 0 <= record["digits_precision"] <= 1
    # 4 training steps are far from the held-out real digits; the floor is 32 training images scored the same way
    floor = record["floor"]
    assert floor["digits_floor_num_images"] == record["digits_num_images"] == 32
    assert 0 < floor["digits_floor_fd"] < record["digits_fd"]
    assert 0 <= record["digits_near_copy_fraction"] <= 1 and record["digits_train_nn_distance"] > 0
    summary = record["config"]
    assert (summary["solver"], summary["num_steps"], summary["sigma_max"], summary["model"]) == \
        ("heun", 4, 80.0, "DigitsDataset")
    assert record["sample_sec"] > 0 and record["metric_sec"] > 0
    assert len(list((job / "images").glob("*.png"))) == 32 and (job / "images" / "000031.png").is_file()
    assert (job / "samples.png").is_file() and list(job.glob("wandb/offline-run-*"))


def test_fid_is_the_minimum_over_seed_ranges(digits_run, tmp_path):
    """With reference statistics computed from seeds 0-7's own images, the first range scores FID 0 and the next
    two ranges more, so EDM's minimum over ranges picks the first."""
    from inception_fixtures import write_random_inception_weights

    from edmlab.evaluation.metrics import feature_statistics, inception_features, save_statistics

    weights = tmp_path / "inception.pth"
    write_random_inception_weights(weights, seed=0)
    common = [f"ckpt={digits_run}", "num_samples=8", "sampler.num_steps=3", "metrics.dataset=false"]
    eval_job(tmp_path, [*common, "save=npz"], "first")
    with np.load(tmp_path / "first" / "samples.npz") as z:
        images = torch.from_numpy(z["images"]).permute(0, 3, 1, 2)
    save_statistics(tmp_path / "ref.npz", *feature_statistics(inception_features(images, weights_path=weights)))
    record = eval_job(tmp_path, [*common, f"metrics.fid.ref={tmp_path / 'ref.npz'}",
                                 f"metrics.fid.weights_path={weights}", "metrics.fid.seed_ranges=3",
                                 "metrics.fid.method=eigh"], "fid")
    first, *others = record["fid_per_range"]
    assert len(others) == 2 and abs(first) < 1e-6 * min(others)
    assert record["fid"] == min(record["fid_per_range"]) and record["config"]["seeds"] == "0-23"


@pytest.mark.parametrize("kind", ["missing", "not-edmlab"])
def test_bad_checkpoint_exits_2_with_one_clear_line(kind, tmp_path):
    path = tmp_path / "nothing-here"
    if kind == "not-edmlab":
        path = tmp_path / "other.pt"
        torch.save({"weights": torch.zeros(3)}, path)
    result = run_script("eval.py", [f"ckpt={path}", "logger=none"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_refused_run_leaves_no_run_dir_and_keeps_a_dir_with_other_files(tmp_path):
    """The failure record of a refused single run goes with the dir Hydra made for it; a dir that held samples
    before is kept whole."""
    bad = run_script("eval.py", ["ckpt=bench:ring8", "num_samples=0", "logger=none"], tmp_path)
    assert bad.returncode == 2 and bad.stderr == "error: num_samples=0 must be an integer >= 1\n"
    assert not (tmp_path / "outputs").exists()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "samples.png").write_bytes(b"png")
    bad = run_script("eval.py", ["ckpt=bench:ring8", "num_samples=0", "logger=none", f"hydra.run.dir={earlier}"],
                     tmp_path)
    assert bad.returncode == 2 and (earlier / "samples.png").read_bytes() == b"png"
    assert json.loads((earlier / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("metric,key,network,features", [
    ("fid", "metrics.fid.ref", "Inception-v3 pool3", 2048), ("fd_dinov2", "metrics.fd_dinov2.ref", "DINOv2", 1024)])
def test_a_reference_of_another_feature_size_is_refused_before_sampling(metric, key, network, features, digits_run,
                                                                         tmp_path, monkeypatch):
    """A 64-d mu/sigma file given as the reference of a 2048-d (Inception) or 1024-d (DINOv2) metric fails at job
    start, naming the key, the file and both sizes; no sample is drawn, no file but the failure record written."""
    import edmlab.evaluation.job as job
    from edmlab.evaluation.metrics import save_statistics

    ref = tmp_path / "ref64.npz"
    save_statistics(ref, np.zeros(64), np.eye(64))
    drawn = []
    monkeypatch.setattr(job, "draw", lambda *args, **kwargs: drawn.append(args) or pytest.fail("sampled"))
    enable = ["metrics.fd_dinov2.enabled=true"] if metric == "fd_dinov2" else []
    message = f"{key}={ref} holds 64-d statistics, but {network} features are {features}-d"
    with pytest.raises(ValueError, match=re.escape(message)):
        eval_job(tmp_path, [f"ckpt={digits_run}", "num_samples=8", "save=npz", "grid_images=4", *enable,
                            f"{key}={ref}"])
    assert drawn == [] and sorted(p.name for p in (tmp_path / "job").iterdir()) == ["metrics.json"]
    assert json.loads((tmp_path / "job" / "metrics.json").read_text())["error"].startswith(message)


def test_a_reference_that_is_not_statistics_names_its_key(tmp_path):
    np.savez(tmp_path / "images.npz", images=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"^metrics\.fid\.ref: .*images\.npz' holds arrays \['images'\], but "
                                         r"reference statistics need 'mu' and 'sigma'"):
        eval_job(tmp_path, ["ckpt=bench:ring8", f"metrics.fid.ref={tmp_path / 'images.npz'}"])
    with pytest.raises(FileNotFoundError, match=r"^metrics\.fid\.ref: reference statistics .*absent\.npz' not found"):
        eval_job(tmp_path, ["ckpt=bench:ring8", f"metrics.fid.ref={tmp_path / 'absent.npz'}"])


def test_sample_grid_places_image_k_at_row_k_div_nrow_on_a_white_border(tmp_path):
    """5 constant 2×2 images in a 3-wide grid, each pixel drawn 2×: image k (uint8 value 10k + 10, as
    (x·127.5 + 128) gives for x = (10k − 118)/127.5) at rows 1 + 3·(k // 3), columns 1 + 3·(k % 3), before
    scaling; everything else white."""
    from PIL import Image

    from edmlab.infra.images import save_grid

    values = torch.tensor([10.0 * k + 10 for k in range(5)])
    images = ((values - 128) / 127.5)[:, None, None, None].expand(5, 1, 2, 2)
    picture = np.array(Image.open(save_grid(images, tmp_path / "grid.png", nrow=3, scale=2)))
    expected = np.full((7, 10), 255, dtype=np.uint8)
    for k, v in enumerate(values.int().tolist()):
        r, c = 1 + 3 * (k // 3), 1 + 3 * (k % 3)
        expected[r : r + 2, c : c + 2] = v
    np.testing.assert_array_equal(picture, expected.repeat(2, 0).repeat(2, 1))
