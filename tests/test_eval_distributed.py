"""Scale-out of src/eval.py: two torchrun processes (gloo on the CPU) draw, gather and score exactly what one process
does, on the exact mixture bench and on a trained class-conditional digits network, with FID from all-reduced
Inception statistics; ranks with differing run dirs refuse to start; a joblib sweep runs its jobs in worker
processes and still ends with the sweep report."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose, run_script, train_tiny_run

from edmlab.infra.distributed import Ranks
from edmlab.evaluation import evaluate


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def digits_cond(tmp_path_factory):
    """A tiny class-conditional digits network trained for 2 steps by the real entry point (its run dir)."""
    return train_tiny_run(tmp_path_factory.mktemp("train"), "network.model_channels=8", "duration_kimg=0.064",
                          "data.cond=true", "callbacks.final_report.num_samples=4", "sampler.num_steps=2")


def torchrun(args: list[str], cwd: Path, run_dir: Path | None, script: Path = ROOT / "src" / "eval.py",
             timeout: int = 300) -> subprocess.CompletedProcess:
    """src/eval.py (or ``script``) in 2 processes, as docs/scaling.md starts it."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("EDMLAB_RUN_DIR", None)
    if run_dir is not None:
        env["EDMLAB_RUN_DIR"] = str(run_dir)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def outputs(run_dir: Path) -> tuple[dict, dict]:
    with np.load(run_dir / "samples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((run_dir / "metrics.json").read_text())


def scores(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, float) and not k.endswith("_sec")}


@pytest.mark.parametrize("n,world", [(13, 2), (13, 4), (3, 3), (8, 3), (1, 1)])
def test_rank_shares_split_the_seeds_into_contiguous_blocks_in_order(n, world):
    seeds = range(100, 100 + n)
    shares = [Ranks(rank, world).share(seeds) for rank in range(world)]
    assert [s for share in shares for s in share] == list(seeds)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_two_processes_give_the_one_process_samples_and_metrics_on_the_bench(tmp_path):
    """13 seeds over 2 ranks (7 + 6, in batches of 4): the same points to the last bit, the same exact-ODE error
    and distances, computed once on rank 0 from the gathered points and latents; one run dir, written by rank 0."""
    args = ["ckpt=bench:ring8", "num_samples=13", "batch=4", "sampler.num_steps=8", "save=npz", "logger=none"]
    one = run_script("eval.py", [*args, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    (tmp_path / "two").mkdir()
    two = torchrun(["+launcher=torchrun", *args], tmp_path / "two", tmp_path / "two" / "run")
    assert two.returncode == 0, two.stderr[-3000:]
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["run"]

    (a, ra), (b, rb) = outputs(tmp_path / "one"), outputs(tmp_path / "two" / "run")
    np.testing.assert_array_equal(b["seeds"], np.arange(13))
    np.testing.assert_array_equal(b["samples"], a["samples"])
    assert len(np.unique(a["samples"], axis=0)) == 13
    assert scores(rb) == scores(ra) and set(scores(ra)) >= {"mixture_ode_error", "mixture_sliced_wasserstein"}
    assert (ra["config"]["processes"], rb["config"]["processes"]) == (1, 2)


def test_two_processes_give_the_one_process_images_labels_and_scores_of_a_trained_network(digits_cond, tmp_path):
    """A conditional network with churn noise: every image, its random class and its churn noise come from its own
    seed, so 2 ranks give the single process's uint8 images and labels exactly, and rank 0's digits metrics equal
    the single process's. FID over 2 seed ranges from all-reduced feature sums: with reference statistics of the
    first range's own images (computed here in one process) the first FID is 0 and the second one is not; the
    Inception Score of the gathered logits is the one computed here."""
    from inception_fixtures import write_random_inception_weights

    from edmlab.evaluation.metrics import feature_statistics, inception_outputs, inception_score_from_logits, save_statistics

    args = [f"ckpt={digits_cond}", "num_samples=13", "batch=4", "sampler.num_steps=4", "sampler.S_churn=10",
            "save=npz", "logger=none"]
    one = run_script("eval.py", [*args, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    a, ra = outputs(tmp_path / "one")
    weights = tmp_path / "inception.pth"
    write_random_inception_weights(weights, seed=0)
    expected = inception_outputs(torch.from_numpy(a["images"]).permute(0, 3, 1, 2), weights_path=weights)
    save_statistics(tmp_path / "ref.npz", *feature_statistics(expected["pool"]))

    fid = [f"metrics.fid.ref={tmp_path / 'ref.npz'}", f"metrics.fid.weights_path={weights}",
           "metrics.fid.seed_ranges=2", "metrics.fid.method=eigh", "metrics.isc=true"]
    two = torchrun(["+launcher=torchrun", *args, *fid], tmp_path, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    b, rb = outputs(tmp_path / "two")

    assert b["images"].dtype == np.uint8 and b["images"].shape == (13, 8, 8, 1)
    for key in ("seeds", "images", "labels"):
        np.testing.assert_array_equal(b[key], a[key])
    assert len(np.unique(a["labels"])) > 3 and len(np.unique(a["images"].reshape(13, -1), axis=0)) == 13
    assert {k: v for k, v in scores(rb).items() if k.startswith("digits_")} == \
        {k: v for k, v in scores(ra).items() if k.startswith("digits_")} and "digits_fd" in ra
    first, second = rb["fid_per_range"]
    assert abs(first) < 1e-6 * second and rb["fid"] == first and rb["config"]["seeds"] == "0-25"
    assert rb["is_mean"] == pytest.approx(inception_score_from_logits(expected["logits"])[0], rel=1e-6)


BROKEN_SCORER = """
import runpy, sys
from edmlab.evaluation.metrics import for_dataset

calls = []

def broken(self, points):
    calls.append(len(points))
    if len(calls) == 1:
        raise RuntimeError("the scorer broke on purpose")
    return {{"mixture_sliced_wasserstein": 0.5}}

for_dataset.MixtureScore.__call__ = broken  # rank 0 alone scores: its first call raises
sys.argv[0] = "{eval}"
runpy.run_path("{eval}", run_name="__main__")
"""


def broken_scorer_script(tmp_path: Path) -> Path:
    """src/eval.py with the mixture scorer (run by rank 0 alone, between collectives) raising on its first call."""
    script = tmp_path / "eval_broken_scorer.py"
    script.write_text(BROKEN_SCORER.format(eval=ROOT / "src" / "eval.py"))
    return script


def test_fd_dinov2_of_two_processes_is_the_one_process_value(tmp_path):
    """FD-DINOv2's ranks all-reduce the feature sums (edmlab.infra.distributed.mean_covariance), as FID's: two processes,
    6 + 6 images per seed range, score what one process scores from all 12. A 1-block, 8-wide DINOv2 ViT stands in
    for ViT-L/14 (src/eval.py run through a wrapper that swaps edmlab.evaluation.metrics.dinov2.build_network)."""
    import pickle

    import edmlab.evaluation.metrics.dinov2 as dinov2
    from edmlab.io.network_file import build_denoiser, save_network

    spec = {"network": {"_target_": "edmlab.nets.SongUNet", "model_channels": 8, "channel_mult": [1],
                        "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0},
            "network_kwargs": dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=0),
            "preconditioning": {"_target_": "edmlab.EDMPrecond", "sigma_data": 0.5}, "shape": [3, 8, 8]}
    torch.manual_seed(0)
    ckpt = save_network(tmp_path / "network.pt", build_denoiser(spec), spec)
    arch = dict(img_size=42, patch_size=14, embed_dim=8, depth=1, num_heads=2, mlp_ratio=4)
    torch.save({k: torch.randn(v.shape) for k, v in dinov2.DINOv2ViT(**arch).state_dict().items()},
               tmp_path / "tiny_dinov2.pth")
    rng = np.random.default_rng(6)
    a = rng.normal(size=(8, 8))
    with open(tmp_path / "img8.pkl", "wb") as f:  # NVlabs/edm2 dataset-refs layout
        pickle.dump({"fd_dinov2": {"mu": rng.normal(size=8), "sigma": a @ a.T / 8 + np.eye(8)}}, f)
    script = tmp_path / "eval_tiny_dinov2.py"
    script.write_text(f"import runpy\nimport edmlab.evaluation.metrics.dinov2 as d\n"
                      f"d.build_network = lambda: d.DINOv2ViT(**{arch!r})\n"
                      f"runpy.run_path({str(ROOT / 'src' / 'eval.py')!r}, run_name='__main__')\n")
    args = [f"ckpt={ckpt}", "num_samples=12", "sampler.num_steps=2", "batch=12", "device=cpu", "metrics.dataset=false",
            "logger=none", "grid_images=0", "metrics.fid.seed_ranges=2", "metrics.fd_dinov2.enabled=true",
            f"metrics.fd_dinov2.ref={tmp_path / 'img8.pkl'}",
            f"metrics.fd_dinov2.weights_path={tmp_path / 'tiny_dinov2.pth'}"]
    one = run_script(str(script), [*args, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(["+launcher=torchrun", *args], tmp_path, tmp_path / "two", script=script)
    assert two.returncode == 0, two.stderr[-3000:]
    ra, rb = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two"))
    assert (ra["config"]["processes"], rb["config"]["processes"]) == (1, 2)
    np.testing.assert_allclose(rb["fd_dinov2_per_range"], ra["fd_dinov2_per_range"], rtol=1e-9)
    assert rb["fd_dinov2"] == min(rb["fd_dinov2_per_range"]) and len(set(ra["fd_dinov2_per_range"])) == 2


def test_a_rank_zero_failure_between_collectives_stops_every_rank_with_its_error(tmp_path):
    """Rank 0 scores alone between the gather and the next all-reduce; its error reaches rank 1 through one
    collective instead of leaving rank 1 in the all-reduce until gloo's 30-minute timeout: both ranks exit with
    the error within the test's timeout, and metrics.json records it."""
    args = ["+launcher=torchrun", "ckpt=bench:ring8", "num_samples=8", "sampler.num_steps=4", "logger=none",
            "metrics.ode_error=false", "grid_images=0"]
    result = torchrun(args, tmp_path, tmp_path / "run", broken_scorer_script(tmp_path), timeout=150)
    assert result.returncode != 0
    assert "RuntimeError: the scorer broke on purpose" in result.stderr
    assert "rank 0 of 2 failed (RuntimeError: the scorer broke on purpose); rank 1 stops" in result.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (record["status"], record["error"]) == ("failed", "RuntimeError: the scorer broke on purpose")


def test_in_a_torchrun_multirun_a_failed_job_keeps_the_ranks_in_step_for_the_next(tmp_path):
    """Both ranks record job 0's failure and go on together: job 1's collectives line up, it completes."""
    sweep = tmp_path / "sweep"
    args = ["-m", "+launcher=torchrun", "ckpt=bench:ring8", "num_samples=8", "sampler.num_steps=3,4", "logger=none",
            "metrics.ode_error=false", "grid_images=0"]
    result = torchrun(args, tmp_path, sweep, broken_scorer_script(tmp_path), timeout=150)
    assert result.returncode == 1, result.stderr[-3000:]
    failed, ok = (json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json")))
    assert (failed["status"], failed["error"]) == ("failed", "RuntimeError: the scorer broke on purpose")
    assert (ok["status"], ok["mixture_sliced_wasserstein"], ok["nfe"]) == ("ok", 0.5, 7)


def test_ranks_with_clock_stamped_run_dirs_refuse_to_run(tmp_path):
    result = torchrun(["ckpt=bench:ring8", "num_samples=4", "logger=none"], tmp_path, None)
    assert result.returncode != 0
    assert "got different run dirs" in result.stderr and "+launcher=torchrun" in result.stderr
    assert not list(tmp_path.glob("outputs/eval/*/samples.png"))


def test_joblib_sweep_runs_jobs_in_worker_processes_and_ends_with_the_sweep_report(tmp_path):
    """Hydra calls on_multirun_end in the launching process after the launcher returns, whatever the launcher
    (hydra/_internal/hydra.py: Hydra.multirun), so sweep.csv, sweep.md and the plot appear; each row equals the
    same job run in this process."""
    sweep = tmp_path / "sweep"
    common = ["ckpt=bench:ring8", "num_samples=64", "sampler.num_steps=8", "logger=none", "metrics.ode_error=false"]
    result = run_script("eval.py", ["-m", "+launcher=joblib", "hydra.launcher.n_jobs=2", "solver=euler,heun", *common,
                                    f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2,backend=loky" in result.stdout + result.stderr
    assert "sweep report:" in result.stdout and "(2 jobs, 0 failed)" in result.stdout
    with open(sweep / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["solver"]: int(r["nfe"]) for r in rows} == {"euler": 8, "heun": 15}
    assert (sweep / "sweep.md").is_file() and not (sweep / "mixture_sliced_wasserstein_vs_nfe.png").exists()
    for row in rows:
        cfg = compose("eval", [*common, f"solver={row['solver']}", "grid_images=0"], tmp_path / row["solver"])
        expected = evaluate(cfg)["mixture_sliced_wasserstein"]
        assert float(row["mixture_sliced_wasserstein"]) == expected and row["status"] == "ok"
