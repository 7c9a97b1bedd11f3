"""Searched time steps (``edmlab.sampling.search_steps``): the dynamic programme against brute force, the search
against the analytic grids on a bench, the steps file through ``discretization=custom``, and the command line
(``python -m edmlab.cli.search_steps <ckpt> --solver ipndm --nfe 10 --out steps.json``)."""
import itertools
import json
import re

import pytest
import torch

import edmlab
from edmlab.cli import search_steps as search_steps_cli
from edmlab.sampling import search_steps
from edmlab.data.points import make_mixture

SMALL = dict(latents=64, holdout=128, fine=25, teacher_substeps=2, iters=40, seed=0)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("steps") / "ipndm6.json"
    record = search_steps_cli.main(["bench:mixture16", "--solver", "ipndm", "--nfe", "6", "--out", str(out)]
                                   + [a for k, v in SMALL.items() for a in (f"--{k.replace('_', '-')}", str(v))])
    return out, record


def test_dp_path_is_the_cheapest_path_by_brute_force():
    generator = torch.Generator().manual_seed(3)
    cost = torch.rand(8, 8, generator=generator, dtype=torch.float64).triu(1)
    cost = torch.where(cost > 0, cost, torch.full_like(cost, float("inf")))
    for levels in (2, 3, 4, 6):
        brute = min(((0, *middle, 7) for middle in itertools.combinations(range(1, 7), levels - 2)),
                    key=lambda path: sum(float(cost[a, b]) for a, b in zip(path, path[1:])))
        assert tuple(search_steps.dp_path(cost, levels)) == brute


def test_teacher_states_follow_the_closed_form_path_of_a_gaussian():
    # Data N(0, s²I): the ODE path is x(σ) = x(σ_0)·√((s² + σ²)/(s² + σ_0²)); the teacher must record it at its fine
    # levels (a level off by one substep would be ~10% away).
    gaussian = edmlab.GaussianMixture([[0.0, 0.0]], 0.5)
    latents, labels = search_steps.draw_latents((2,), 16, seed=1)
    t = search_steps.teacher(gaussian, latents, labels, 0.002, 80.0, fine=9, substeps=32)
    s2 = 0.25
    path = latents * 80.0 * ((s2 + t.sigmas**2) / (s2 + 80.0**2)).sqrt().reshape(-1, 1, 1)
    torch.testing.assert_close(t.states, path, rtol=5e-4, atol=1e-6)
    torch.testing.assert_close(t.endpoints, latents * 80.0 * (s2 / (s2 + 80.0**2)) ** 0.5, rtol=5e-4, atol=1e-6)
    torch.testing.assert_close(t.denoised, s2 / (s2 + t.sigmas**2).reshape(-1, 1, 1) * t.states)


def test_search_beats_every_analytic_grid_on_held_out_latents(searched):
    _, record = searched
    scores = record["holdout_error"]
    best_analytic = min(scores[name]["median"] for name in search_steps.ANALYTIC)
    assert scores["searched"]["median"] < 0.5 * best_analytic, scores
    assert record["num_steps"] == len(record["sigmas"]) == 6 and record["final_step"] == "euler"


def test_steps_file_round_trips_through_custom_discretization(searched):
    out, record = searched
    saved = json.loads(out.read_text())
    assert (saved["solver"], saved["nfe"], saved["model"]) == ("ipndm", 6, "bench:mixture16")
    mixture = make_mixture("mixture16")
    z = torch.randn(32, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    from_file = edmlab.sample(mixture, z, solver="ipndm", discretization="custom", steps=str(out), nfe=6)
    from_list = edmlab.sample(mixture, z, solver="ipndm", discretization="custom", steps=saved["sigmas"],
                              final_step=saved["final_step"])
    assert torch.equal(from_file, from_list)
    seen = []
    edmlab.sample(mixture, z, solver="ipndm", discretization="custom", steps=str(out),
                  callback=lambda step: seen.append(step["sigma"]))
    assert seen == pytest.approx(saved["sigmas"], rel=1e-15)
    assert edmlab.nfe("ipndm", discretization="custom", steps=str(out), final_step=saved["final_step"]) == 6


def test_the_options_keep_search_defaults_and_spell_none_as_unset():
    args = search_steps_cli.build_parser().parse_args(["bench:mixture16"])
    assert (args.ckpt, args.solver, args.nfe, args.out, args.final_step, args.afs, args.max_order) == \
        ("bench:mixture16", "ipndm", 10, "steps.json", None, None, None)
    assert (args.latents, args.holdout, args.fine, args.teacher_substeps, args.iters, args.seed, args.sigma_min,
            args.sigma_max) == (256, 512, 61, 4, 300, 0, 0.002, 80.0)
    args = search_steps_cli.build_parser().parse_args(["run", "--final-step", "none", "--teacher-substeps", "2"])
    assert (args.final_step, args.teacher_substeps) == ("none", 2)  # "none": no final step, not "unset"


@pytest.mark.parametrize("argv, message", [
    (["--solver", "ipndm"], r"the following arguments are required: ckpt"),
    (["bench:mixture16", "--nfe", "ten"], r"argument --nfe: invalid int value: 'ten'"),
    (["bench:mixture16", "steps=5"], r"unrecognized arguments: steps=5"),
    (["bench:mixture16", "--afs", "yes"], r"argument --afs: invalid choice: 'yes'"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        search_steps_cli.main(argv)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.match(r"error: " + message + r".* \(see python -m edmlab.cli.search_steps --help\)$", line), line


def test_out_must_be_a_file(tmp_path):
    with pytest.raises(ValueError, match=rf"--out {re.escape(str(tmp_path))} is a directory; give a file path such "
                                         rf"as --out {re.escape(str(tmp_path / 'steps.json'))}"):
        search_steps_cli.main(["bench:mixture16", "--out", str(tmp_path)])


def test_unknown_bench_and_impossible_nfe():
    with pytest.raises(ValueError, match=r"unknown bench preset ckpt=bench:nope"):
        search_steps_cli.load_model("bench:nope")
    with pytest.raises(ValueError, match=r"solver='heun' cannot spend exactly nfe=4 calls"):
        search_steps.search(make_mixture("mixture16"), (16,), solver="heun", nfe=4, final_step="euler", **SMALL)
