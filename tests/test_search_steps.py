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
    assert (args.objective, args.quantile, args.tail_weight) == ("mean", 0.99, 1.0)
    args = search_steps_cli.build_parser().parse_args(["run", "--final-step", "none", "--teacher-substeps", "2"])
    assert (args.final_step, args.teacher_substeps) == ("none", 2)  # "none": no final step, not "unset"


@pytest.mark.parametrize("argv, message", [
    (["--solver", "ipndm"], r"the following arguments are required: ckpt"),
    (["bench:mixture16", "--nfe", "ten"], r"argument --nfe: invalid int value: 'ten'"),
    (["bench:mixture16", "steps=5"], r"unrecognized arguments: steps=5"),
    (["bench:mixture16", "--afs", "yes"], r"argument --afs: invalid choice: 'yes'"),
    (["bench:mixture16", "--objective", "median"], r"argument --objective: invalid choice: 'median'"),
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


def test_each_objective_is_its_formula_on_fixed_errors():
    errors = torch.arange(100, 0, -1, dtype=torch.float64)  # 100, 99, …, 1: sorted ascending e_(i) = i + 1
    # q = 0.99: h = 0.99·99 = 98.01, Q = e_(98) + 0.01·(e_(99) − e_(98)) = 99 + 0.01 = 99.01
    expected = {"mean": 50.5, "quantile": 99.01, "mse": 100 * 101 * 201 / 6 / 100, "mix": 50.5 + 0.5 * 99.01}
    for name, value in expected.items():
        reduce = search_steps.objective_reduction(name, quantile=0.99, tail_weight=0.5)
        assert float(reduce(errors)) == pytest.approx(value, rel=1e-12), name
    rows = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.0, 0.0, 0.0, 8.0]], dtype=torch.float64)
    median_of_rows = search_steps.objective_reduction("quantile", quantile=0.5)(rows)  # h = 1.5: (2 + 3)/2, (0 + 0)/2
    assert median_of_rows.tolist() == [2.5, 0.0]
    assert search_steps.objective_reduction("mse")(rows).tolist() == [7.5, 16.0]
    assert search_steps.objective_reduction("mix", quantile=0.75, tail_weight=2.0)(rows).tolist() == \
        [2.5 + 2 * 3.25, 2.0 + 2 * 2.0]  # h = 2.25: 3 + 0.25·1 = 3.25; 0 + 0.25·8 = 2


def test_the_default_objective_is_the_mean_endpoint_error():
    mixture = make_mixture("mixture16")
    tune = search_steps.teacher(mixture, *search_steps.draw_latents((16,), 24, seed=2), 0.002, 80.0, fine=13,
                                substeps=1)
    cost = search_steps.local_errors(tune)
    for i, j in ((0, 1), (2, 7), (11, 12)):
        step = tune.denoised[i] + tune.sigmas[j] / tune.sigmas[i] * (tune.states[i] - tune.denoised[i])
        assert float(cost[i, j]) == pytest.approx(float((step - tune.states[j]).norm(dim=-1).mean()), rel=1e-12)
    levels, sampler = search_steps.sampler_options("ipndm", 5)
    explicit_mean = lambda e: e.sum(-1) / e.shape[-1]  # noqa: E731
    default = search_steps.search_grid(mixture, tune, levels, sampler, iters=12)
    assert default == search_steps.search_grid(mixture, tune, levels, sampler, iters=12, reduce=explicit_mean)
    assert default == search_steps.search_grid(mixture, tune, levels, sampler, iters=12,
                                               reduce=search_steps.objective_reduction("mean"))
    tail = search_steps.search_grid(mixture, tune, levels, sampler, iters=12,
                                    reduce=search_steps.objective_reduction("quantile", quantile=0.9))
    assert tail[1] != default[1]


def test_the_steps_file_records_the_objective(searched, tmp_path):
    out, record = searched
    assert json.loads(out.read_text())["search"]["objective"] == {"name": "mean"}
    assert record["holdout_error"]["searched"]["objective"] == record["holdout_error"]["searched"]["mean"]
    out = tmp_path / "mix.json"
    search_steps_cli.main(["bench:mixture16", "--solver", "deis", "--nfe", "5", "--out", str(out), "--objective", "mix",
                           "--quantile", "0.9", "--tail-weight", "0.5", "--latents", "32", "--holdout", "64",
                           "--fine", "13", "--teacher-substeps", "1", "--iters", "8"])
    saved = json.loads(out.read_text())
    assert saved["search"]["objective"] == {"name": "mix", "quantile": 0.9, "tail_weight": 0.5}
    assert saved["search"]["method"] == "GITS dynamic programming + Nelder-Mead on the mix of the endpoint errors"


@pytest.mark.parametrize("options, message", [
    (dict(objective="median"), "unknown objective='median'; choose one of mean, quantile, mse, mix"),
    (dict(objective="quantile", quantile=1.0), "quantile=1.0 must lie strictly between 0 and 1, e.g. quantile=0.99"),
    (dict(quantile=0.0), "quantile=0.0 must lie strictly between 0 and 1, e.g. quantile=0.99"),
    (dict(objective="mix", tail_weight=-0.5), "tail_weight=-0.5 must be >= 0, e.g. tail_weight=1"),
])
def test_bad_objectives_are_refused(options, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        search_steps.search(make_mixture("mixture16"), (16,), **options, **SMALL)


def test_a_bad_quantile_on_the_command_line_writes_nothing(tmp_path):
    out = tmp_path / "steps.json"
    with pytest.raises(ValueError, match=r"^quantile=1\.5 must lie strictly between 0 and 1, e\.g\. quantile=0\.99$"):
        search_steps_cli.main(["bench:mixture16", "--objective", "quantile", "--quantile", "1.5", "--out", str(out)])
    assert not out.exists()
