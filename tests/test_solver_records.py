"""A solver is one function plus one record (``edmlab.sampling.solvers.Solver``): ``plan``, ``sample`` and ``nfe``
read the record, so a new solver needs nothing else — shown here by adding one (Ralston's 2nd-order method in σ)
from the test alone."""
from pathlib import Path

import pytest
import torch
import yaml

import edmlab
from edmlab.sampling.planning import sampler_keys
from edmlab.sampling.solvers import OPTIONS, SOLVERS, Solver
from edmlab.sampling.solvers.calls import DenoiserCalls, final_step_in_sigma

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_every_record_is_named_as_its_key_and_lists_known_options():
    for name, record in SOLVERS.items():
        assert record.name == name
        assert set(record.options) <= set(OPTIONS), name
        assert (record.max_order is None) == ("max_order" not in record.options), name
        assert set(record.needs) <= {"round_sigma", "generator"}, name


def test_every_solver_yaml_names_a_record_and_sets_only_sampler_keys():
    files = sorted((CONF / "solver").glob("*.yaml"))
    assert {f.stem for f in files} == set(SOLVERS)
    for f in files:
        settings = yaml.safe_load(f.read_text())
        assert settings["solver"] == f.stem
        assert set(settings) <= sampler_keys(), f.name


def test_an_option_of_another_solver_is_refused_naming_who_takes_it():
    with pytest.raises(ValueError, match=r"max_order=2 does not apply to solver='heun'; it is an option of deis, "
                                         r"ipndm, ipndm_v, unipc"):
        edmlab.plan(solver="heun", max_order=2)
    with pytest.raises(ValueError, match=r"unknown sampler option tau=0.5: the solver options are alpha, atol, churn, eta"):
        edmlab.plan(solver="heun", tau=0.5)


def ralston_in_sigma(denoiser, x, sigmas, *, final_step="euler", afs=None, callback=None, denoiser_kwargs=None):
    """Ralston's method on dx/dσ = (x − D)/σ: k1 at σ_i, k2 at σ_i + ⅔h, x + h(¼k1 + ¾k2); an independent
    transcription of the textbook update (Hairer, Nørsett & Wanner I, Table II.1.1)."""
    model = DenoiserCalls(denoiser, denoiser_kwargs, afs)
    sigmas = [float(s) for s in sigmas]
    for i in range(len(sigmas) - 2):
        s, h = sigmas[i], sigmas[i + 1] - sigmas[i]
        k1 = (x - model(x, s, first=i == 0)) / s
        x_mid = x + 2 / 3 * h * k1
        k2 = (x_mid - model(x_mid, s + 2 / 3 * h)) / (s + 2 / 3 * h)
        x = x + h * (k1 / 4 + 3 * k2 / 4)
    return final_step_in_sigma(model, x, sigmas[-2], final_step, first=len(sigmas) == 2)[0]


def gaussian_denoiser(x, sigma):
    """D(x; σ) = x/(1 + σ²): the exact denoiser of data N(0, I) (σ_data = 1)."""
    return x / (1 + sigma.view(-1, 1) ** 2)


def test_a_new_solver_is_its_function_and_its_record(monkeypatch):
    monkeypatch.setitem(SOLVERS, "ralston", Solver("ralston", ralston_in_sigma, calls_per_step=2))
    counted = edmlab.CountingDenoiser(gaussian_denoiser)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = edmlab.sample(counted, z, solver="ralston", num_steps=6, sigma_min=0.002, sigma_max=80.0)
    assert counted.calls == edmlab.nfe("ralston", 6) == 2 * 5 + 1
    assert edmlab.plan(solver="ralston", nfe=11).num_steps == 6
    with pytest.raises(ValueError, match=r"solver='ralston' integrates EDM's ODE in σ"):
        edmlab.plan(solver="ralston", schedule="vp")
    with pytest.raises(ValueError, match=r"alpha=0.5 does not apply to solver='ralston'; it is an option of heun"):
        edmlab.plan(solver="ralston", alpha=0.5)
    # the update written out by hand on this linear ODE, dx/dσ = (x − x/(1 + σ²))/σ, then EDM's Euler step to 0
    sigmas = [float(s) for s in edmlab.sigma_steps(6, sigma_min=0.002, sigma_max=80.0)]
    y = z * sigmas[0]

    def f(y, s):
        return (y - y / (1 + s * s)) / s

    for i in range(5):
        s, h = sigmas[i], sigmas[i + 1] - sigmas[i]
        k1 = f(y, s)
        k2 = f(y + 2 / 3 * h * k1, s + 2 / 3 * h)
        y = y + h * (k1 / 4 + 3 * k2 / 4)
    y = y + (0.0 - sigmas[5]) * f(y, sigmas[5])
    torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
