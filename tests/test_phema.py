"""Post-hoc EMA (EDM2 §3, App. C): std ↔ exponent, profile inner products, tracking, reconstruction, snapshots."""
import math

import numpy as np
import pytest
import torch
from conftest import CONF, assert_close_by_key, compose, with_overrides
from omegaconf import OmegaConf
from scipy import integrate

import edmlab
from edmlab.design import phema
from edmlab.io import snapshots
from edmlab.cli import phema as phema_cli
from edmlab.infra.spec import build
from edmlab.training.ema import PowerEMA, RunFiles, TraditionalEMA, ema_beta
from edmlab.training.module import build_group


def relative_std(gamma: float) -> float:
    """σ_rel = √((γ + 1)/((γ + 2)²(γ + 3))), EDM2 Eq. 123, transcribed."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


@pytest.mark.parametrize("std", [0.001, 0.01, 0.05, 0.1, 0.2, 0.28])
def test_std_exponent_round_trip(std):
    gamma = phema.std_to_exp(std)
    assert gamma >= 0
    assert relative_std(gamma) == pytest.approx(std, rel=1e-12)


def test_exponents_of_edm2_defaults():
    """EDM2's two tracked profiles have γ ≈ 16.97 and 6.94; γ = 0 (uniform average) has σ_rel = 1/√12."""
    assert phema.std_to_exp(0.05) == pytest.approx(16.9722, abs=1e-4)
    assert phema.std_to_exp(0.10) == pytest.approx(6.9372, abs=1e-4)
    assert relative_std(0.0) == pytest.approx(1 / math.sqrt(12), rel=1e-15)


@pytest.mark.parametrize("std", [0.0, -0.1, 0.289, 1.0])
def test_std_outside_the_valid_range_is_refused(std):
    with pytest.raises(ValueError, match=rf"EMA std={std} is outside \(0, 0.2887\)"):
        phema.std_to_exp(std)


def profile(tau, t, std):
    """The power profile written out: (γ+1)·τ^γ / t^(γ+1) on [0, t], with γ solved numerically from σ_rel."""
    from scipy.optimize import brentq

    gamma = brentq(lambda g: math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) - std, 0.0, 1e6)
    return (gamma + 1) * tau**gamma / t ** (gamma + 1) if tau <= t else 0.0


@pytest.mark.parametrize("t_a, std_a, t_b, std_b", [(1.0, 0.05, 1.0, 0.10), (0.6, 0.05, 1.0, 0.10),
                                                    (1.0, 0.05, 0.6, 0.10), (3.0, 0.2, 2.0, 0.01),
                                                    (500.0, 0.1, 800.0, 0.1)])
def test_inner_product_matches_quadrature(t_a, std_a, t_b, std_b):
    expected, _ = integrate.quad(lambda tau: profile(tau, t_a, std_a) * profile(tau, t_b, std_b), 0, min(t_a, t_b),
                                 epsabs=0, epsrel=1e-11, limit=200)
    assert phema.profile_inner_product(t_a, std_a, t_b, std_b) == pytest.approx(expected, rel=1e-8)


def test_power_ema_tracks_the_telescoped_profile():
    """After T steps of β_k = (1 − 1/k)^(γ+1) the EMA is Σ_k θ_k·(k^(γ+1) − (k−1)^(γ+1))/T^(γ+1) exactly."""
    net = torch.nn.Linear(3, 2).double()
    tracker = PowerEMA(net, stds=[0.05, 0.15])
    thetas, T, batch = [], 50, 4
    for k in range(T):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p))
        thetas.append([p.detach().clone() for p in net.parameters()])
        tracker.update(k * batch, batch)
    for std, average in zip(tracker.stds, tracker.averages):
        g1 = phema.std_to_exp(std) + 1
        w = [(k**g1 - (k - 1) ** g1) / T**g1 for k in range(1, T + 1)]
        for i, p in enumerate(average.parameters()):
            torch.testing.assert_close(p, sum(wk * th[i] for wk, th in zip(w, thetas)), rtol=1e-12, atol=1e-12)


def test_traditional_ema_object_keeps_edm_numbers():
    net = torch.nn.Linear(2, 2).double()
    tracker, by_hand = TraditionalEMA(net, halflife_kimg=0.05, rampup_ratio=0.05), None
    by_hand = [p.detach().clone() for p in net.parameters()]
    for k in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        beta = 0.5 ** (16 / max(min(50, k * 16 * 0.05), 1e-8))
        assert ema_beta(16, k * 16, 0.05, 0.05) == beta
        by_hand = [beta * e + (1 - beta) * p.detach() for e, p in zip(by_hand, net.parameters())]
        tracker.update(k * 16, 16)
    for a, b in zip(tracker.averages[0].parameters(), by_hand):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "ema").glob("*.yaml")))
def test_each_option_builds_its_tracker_with_the_yaml_values(option, tmp_path):
    """``build`` of conf/ema/<option>.yaml with ``net=``: the yaml's class holding the yaml's values, one average
    per std (one for the half-life EMA), each a frozen copy of the network."""
    cfg = compose("train", [f"ema={option}"], tmp_path)
    spec = OmegaConf.to_container(cfg.ema, resolve=True)
    net = torch.nn.Linear(3, 2)
    tracker = build(spec, net=net)
    assert f"{type(tracker).__module__}.{type(tracker).__name__}" == spec.pop("_target_")
    assert {key: getattr(tracker, key) for key in spec} == spec
    assert tracker.describe() == {"kind": option, "stds": spec.get("stds")}
    assert len(tracker.averages) == len(spec.get("stds", [None]))
    for average in tracker.averages:
        assert average is not net and not any(p.requires_grad for p in average.parameters())
        assert_close_by_key(average.state_dict(), net.state_dict(), rtol=0, atol=0)
    if option == "power":
        assert spec["snapshot_dir"] == f"{tmp_path}/phema" and spec["stds"] == [0.05, 0.10]


def test_a_kind_spec_of_earlier_configs_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^ema=\{'kind': 'power', 'stds': \[0.05\]\} names no _target_: "
                                         r"ema.kind='power' is the form written before the ema options named their "
                                         r"class; give it the _target_ of conf/ema/power.yaml, or train \(and "
                                         r"resume\) with src/train.py ema=power$"):
        build_group("ema", {"kind": "power", "stds": [0.05]}, net=torch.nn.Linear(2, 2))


def test_tracker_state_is_checked_on_load():
    """A tracker loads the state of the same kind and stds (or an older checkpoint's, without those keys) and refuses
    another's, naming both values; a power tracker remembers where the earlier run's snapshots are."""
    net = torch.nn.Linear(2, 2)
    power, traditional = PowerEMA(net, stds=[0.05, 0.10], snapshot_dir="/run/a/phema"), TraditionalEMA(net)
    assert power.state_dict() == {"kind": "power", "stds": [0.05, 0.10], "snapshot_dir": "/run/a/phema"}
    assert traditional.state_dict() == {"kind": "traditional", "stds": None}
    resumed = PowerEMA(net, stds=[0.05, 0.10], snapshot_dir="/run/b/phema")
    resumed.load_state_dict(power.state_dict())
    assert resumed.earlier_snapshot_dir == "/run/a/phema"
    traditional.load_state_dict(TraditionalEMA(net, halflife_kimg=500).state_dict())
    traditional.load_state_dict({})
    with pytest.raises(ValueError, match=r"^the saved EMAs have ema.stds=\[0.05, 0.1\], this run ema.stds=\[0.05, "
                                         r"0.2\]: resume with ema.stds=\[0.05, 0.1\], or start a new run$"):
        PowerEMA(net, stds=[0.05, 0.2]).load_state_dict(power.state_dict())
    with pytest.raises(ValueError, match=r"^the saved EMAs have ema.kind=power, this run ema.kind=traditional"):
        traditional.load_state_dict(power.state_dict())


def test_power_ema_hooks_write_snapshots_only_where_given_the_run_files(tmp_path):
    """after_step writes a snapshot at each multiple of snapshot_kimg crossed, at_end one at the end; a process
    without the run's files (files=None: not rank 0) writes none but averages alike."""
    net = torch.nn.Linear(2, 2)
    writer = PowerEMA(net, stds=[0.10], snapshot_kimg=0.048, snapshot_dir=tmp_path / "rank0")
    other = PowerEMA(net, stds=[0.10], snapshot_kimg=0.048, snapshot_dir=tmp_path / "rank1")
    files = RunFiles({"spec": 1}, {"seed": 0})
    for k in range(7):
        with torch.no_grad():
            net.weight.add_(1.0)
        writer.after_step(k * 32, 32, files)
        other.after_step(k * 32, 32, None)
    writer.at_end(7 * 32, files)
    other.at_end(7 * 32, None)
    written = sorted((tmp_path / "rank0").glob("snapshot-*.pt"))
    assert [int(f.stem.split("-")[1]) for f in written] == [64, 96, 160, 192, 224]
    assert not (tmp_path / "rank1").exists()
    assert_close_by_key(writer.averages[0].state_dict(), other.averages[0].state_dict(), rtol=0, atol=0)
    last = snapshots.read_snapshot(written[-1])
    assert (last["model"], last["config"], last["stds"]) == ({"spec": 1}, {"seed": 0}, [0.10])


def test_reconstructing_a_tracked_std_from_the_others():
    """A profile tracked during training (σ_rel 0.07) is rebuilt from snapshots of 0.05 and 0.10 alone."""
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 16, bias=False).double()
    W = torch.randn(3, 16, 16, dtype=torch.float64)
    stored, target = PowerEMA(net, stds=[0.05, 0.10]), PowerEMA(net, stds=[0.07])
    T, batch, snapshots = 2000, 8, []
    for k in range(T):
        u = (k + 1) / T
        with torch.no_grad():
            net.weight.copy_(W[0] * math.cos(3 * u) + W[1] * u**2 + 0.3 * W[2] * math.sin(7 * u)
                             + 0.05 * torch.randn(16, 16, dtype=torch.float64))
        stored.update(k * batch, batch)
        target.update(k * batch, batch)
        if (k + 1) % (T // 16) == 0:
            snapshots.append({"nimg": (k + 1) * batch, "stds": stored.stds,
                              "state_dicts": [{n: v.clone() for n, v in a.state_dict().items()}
                                              for a in stored.averages]})
    rebuilt = phema.reconstruct(snapshots, [0.07])[0]["weight"]
    tracked = target.averages[0].weight
    assert ((rebuilt - tracked).norm() / tracked.norm()).item() <= 1e-3
    x = phema.posthoc_coefficients([s["nimg"] for s in snapshots for _ in (0, 1)], [0.05, 0.10] * 16,
                                   snapshots[-1]["nimg"], 0.07)
    assert x.sum() == pytest.approx(1.0, abs=1e-12)


def test_snapshot_is_written_atomically(tmp_path, monkeypatch):
    """A crash inside torch.save leaves no snapshot file (and no partial one under the final name)."""
    net = torch.nn.Linear(2, 2)
    snapshots.save_snapshot(tmp_path, 1000, [0.05], [net], {"spec": 1}, None)
    before = (tmp_path / "snapshot-000000001000.pt").read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        snapshots.save_snapshot(tmp_path, 2000, [0.05], [net], {"spec": 1}, None)
    with pytest.raises(OSError, match="disk full"):
        snapshots.save_snapshot(tmp_path, 1000, [0.05], [net], {"spec": 1}, None)
    assert not (tmp_path / "snapshot-000000002000.pt").exists()
    assert (tmp_path / "snapshot-000000001000.pt").read_bytes() == before


def test_run_without_snapshots_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no post-hoc EMA snapshots .* train it with ema=power"):
        snapshots.write_networks(tmp_path, [0.05])
    with pytest.raises(FileNotFoundError, match="no run at"):
        snapshots.load_snapshots(tmp_path / "missing")


TINY_POWER = ["network.model_channels=8", "network.channel_mult=[1]", "batch_size=32", "trainer.accelerator=cpu",
              "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
              "callbacks=none", "ema=power", "ema.snapshot_kimg=0.064", "sampler.num_steps=4"]


def fit(tmp_path, name, overrides):
    from edmlab.training.run import build

    cfg = compose("train", with_overrides(TINY_POWER, overrides), tmp_path / name)
    trainer, module, datamodule = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return module


def test_power_ema_run_snapshots_survive_resume_and_reconstruct(tmp_path, one_cpu_thread):
    """Snapshots every 2 steps; a run resumed into another directory carries the earlier snapshots and ends with
    the same ones as an uninterrupted run; the reconstructed network files load with edmlab.load."""
    ckpt = ["callbacks=default", "callbacks.sample_grid.every_n_steps=0", "callbacks.final_report.num_samples=4",
            "callbacks.checkpoint.every_n_train_steps=4"]
    straight = fit(tmp_path, "straight", ["duration_kimg=0.256"])
    fit(tmp_path, "first", ["duration_kimg=0.128", *ckpt])
    first = sorted((tmp_path / "first" / "phema").glob("snapshot-*.pt"))
    assert [int(f.stem.split("-")[1]) for f in first] == [64, 128]
    before = [f.read_bytes() for f in first]
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = fit(tmp_path, "second", ["duration_kimg=0.256", f"ckpt_path={last}", *ckpt])
    assert [f.read_bytes() for f in first] == before
    names = [f.name for f in sorted((tmp_path / "second" / "phema").glob("snapshot-*.pt"))]
    assert names == [f.name for f in sorted((tmp_path / "straight" / "phema").glob("snapshot-*.pt"))]
    assert len(names) == 4
    assert len(straight.ema_tracker.averages) == len(resumed.ema_tracker.averages)
    for a, b in zip(straight.ema_tracker.averages, resumed.ema_tracker.averages):
        assert_close_by_key(a.state_dict(), b.state_dict(), rtol=0, atol=0)

    (path,) = snapshots.write_networks(tmp_path / "second", [0.10])
    assert path.name == "network-phema-0.100.pt"
    loaded = edmlab.load(path)
    # 0.10 was tracked, so its post-hoc reconstruction at the last snapshot is (nearly) the tracked EMA itself.
    assert_close_by_key(dict(loaded.state_dict()), dict(resumed.ema_tracker.averages[1].state_dict()), rtol=0, atol=1e-5)


def test_phema_command_line_and_eval(tmp_path, one_cpu_thread, capsys):
    """python -m edmlab.cli.phema writes loadable network files; src/eval.py reconstructs on the fly (ema.std) and
    guides (guide=, guidance=)."""
    fit(tmp_path, "run", ["duration_kimg=0.128"])
    phema_cli.main([str(tmp_path / "run"), "--std", "0.03,0.06", "--at-kimg", "0.1"])
    out = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in out] == ["network-phema-0.030.pt", "network-phema-0.060.pt"]
    net = edmlab.load(out[0])
    assert net(torch.zeros(1, 1, 8, 8), torch.tensor([1.0])).shape == (1, 1, 8, 8)
    with pytest.raises(SystemExit):
        phema_cli.main([str(tmp_path / "run"), "--std", "0.3"])
    assert "EMA std=0.3 is outside" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"at_kimg=0.01: the first snapshot of .* is at 0.064 kimg"):
        snapshots.load_snapshots(tmp_path / "run", at_kimg=0.01)

    # src/eval.py ckpt=<run> ema.std=0.06 samples the network that the command above wrote.
    from edmlab.evaluation import evaluate

    common = ["num_samples=8", "sampler.num_steps=4", "logger=none", "grid_images=0", "save=npz",
              "metrics.dataset=false"]
    evaluate(compose("eval", [f"ckpt={tmp_path / 'run'}", "ema.std=0.06", "ema.at_kimg=0.1", *common],
                     tmp_path / "on_the_fly"))
    evaluate(compose("eval", [f"ckpt={out[1]}", *common], tmp_path / "from_file"))
    np.testing.assert_array_equal(np.load(tmp_path / "on_the_fly" / "samples.npz")["images"],
                                  np.load(tmp_path / "from_file" / "samples.npz")["images"])

    # src/eval.py guide=<network file> guidance=w (autoguidance by an earlier EMA): w = 1 is the unguided sample,
    # and metrics.json counts the guide's calls (every call for guidance_interval null).
    for w in (1.0, 2.0):
        record = evaluate(compose("eval", [f"ckpt={out[1]}", f"guide={out[0]}", f"guidance={w}", *common],
                                  tmp_path / f"guided{w}"))
        assert (record["nfe"], record["guide_nfe"], record["network_nfe"]) == (7, 7.0, 14.0)
    unguided = np.load(tmp_path / "from_file" / "samples.npz")["images"]
    np.testing.assert_array_equal(np.load(tmp_path / "guided1.0" / "samples.npz")["images"], unguided)
    with pytest.raises(ValueError, match="guidance=2.0 needs guide="):
        evaluate(compose("eval", [f"ckpt={out[1]}", "guidance=2.0", *common], tmp_path / "no_guide"))
