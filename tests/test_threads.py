"""Each process takes its share of the cores it really has (affinity, cgroup quota, parallel jobs), and a user's
OMP_NUM_THREADS wins."""
import os

import pytest
import torch

from edmlab.infra import threads


def test_a_cgroup_quota_caps_the_affinity(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("100000 100000\n")
    assert threads.available_cores(quota) == 1
    quota.write_text("max 100000\n")
    assert threads.available_cores(quota) == affinity
    assert threads.available_cores(tmp_path / "absent") == affinity


@pytest.mark.parametrize("cores, jobs, expected", [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 4, 4), (16, 3, 5)])
def test_parallel_jobs_split_the_cores(cores, jobs, expected, monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    assert threads.thread_share(jobs, environ={}) == expected


def test_omp_num_threads_wins_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    assert threads.thread_share(4, environ={"OMP_NUM_THREADS": "3"}) == 3
    with pytest.raises(ValueError, match=r"OMP_NUM_THREADS='two' must be a positive integer"):
        threads.thread_share(1, environ={"OMP_NUM_THREADS": "two"})
    with pytest.raises(ValueError, match=r"parallel jobs must be an integer >= 1, got 0"):
        threads.thread_share(0, environ={})


def test_share_threads_sets_torch_and_omp_num_threads_and_refuses_zero(monkeypatch):
    """OMP_NUM_THREADS is set too: without it Lightning's launcher puts torch back to all cores."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # restored after the test
    before = torch.get_num_threads()
    try:
        assert threads.share_threads(1) == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
        with pytest.raises(ValueError, match=r"threads=0 must be >= 1"):
            threads.share_threads(0)
    finally:
        torch.set_num_threads(before)


def test_a_joblib_sweep_job_and_a_torchrun_rank_count_as_parallel_jobs(monkeypatch):
    from edmlab.infra import jobs

    monkeypatch.setattr(jobs, "in_multirun", lambda: False)
    assert jobs.parallel_jobs(environ={}) == 1
    assert jobs.parallel_jobs(environ={"LOCAL_WORLD_SIZE": "4"}) == 4


def test_bad_threads_settings_are_named_before_anything_runs(tmp_path):
    from conftest import compose

    from edmlab.evaluation.config import check_config
    from edmlab.training.run import ConfigError, check_train_config

    with pytest.raises(ConfigError, match=r"threads=0"):
        check_train_config(compose("train", ["threads=0"], tmp_path))
    with pytest.raises(ValueError, match=r"threads='two' must be an integer >= 1, or null"):
        check_config(compose("eval", ["ckpt=bench:ring8", "threads=two"], tmp_path))
