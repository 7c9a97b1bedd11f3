"""Solvers of EDM's probability-flow ODE, one plain function each in ``SOLVERS`` (``solver=`` option):

- ``euler``, ``heun``: EDM's Algorithms 1–2 over any σ(t), s(t), with churn (``edm.py``);
- ``ipndm``, ``ipndm_v``, ``deis``, ``dpmpp_2m``, ``dpmpp_3m``, ``unipc``: multistep, one call per step
  (``multistep.py``);
- ``adaptive``: embedded Bogacki–Shampine 3(2) with ``rtol``/``atol`` (``adaptive.py``).

Every solver takes ``final_step`` and ``afs`` (``calls.py``); how many calls a configuration makes is planned in
``edmlab.sampling.planning``.
"""
from edmlab.sampling.solvers.adaptive import sample_adaptive
from edmlab.sampling.solvers.calls import AFS, FINAL_STEPS, CountingDenoiser, DenoiserCalls
from edmlab.sampling.solvers.edm import Denoiser, sample_euler, sample_heun
from edmlab.sampling.solvers.flow import Churn, FlowPoint, ProbabilityFlow, sigma_grid
from edmlab.sampling.solvers.multistep import (sample_deis, sample_dpmpp_2m, sample_dpmpp_3m, sample_ipndm, sample_ipndm_v,
                        sample_unipc)

SOLVERS = {
    "euler": sample_euler, "heun": sample_heun, "ipndm": sample_ipndm, "ipndm_v": sample_ipndm_v,
    "deis": sample_deis, "dpmpp_2m": sample_dpmpp_2m, "dpmpp_3m": sample_dpmpp_3m, "unipc": sample_unipc,
    "adaptive": sample_adaptive,
}
# Solvers over any σ(t), s(t); every other one integrates dx/dσ or dx/dλ itself (``sigma_grid``).
ANY_FLOW = ("euler", "heun")
# The order a multistep solver reaches once it has enough history (max_order where it has one).
ORDER = {"dpmpp_2m": 2, "dpmpp_3m": 3}
CALLS_PER_STEP = {"heun": 2}


__all__ = ["SOLVERS", "ANY_FLOW", "ORDER", "CALLS_PER_STEP", "AFS", "FINAL_STEPS", "Churn", "FlowPoint",
           "ProbabilityFlow", "DenoiserCalls", "CountingDenoiser", "Denoiser", "sigma_grid", "sample_euler", "sample_heun", "sample_ipndm", "sample_ipndm_v", "sample_deis", "sample_dpmpp_2m",
           "sample_dpmpp_3m", "sample_unipc", "sample_adaptive"]
