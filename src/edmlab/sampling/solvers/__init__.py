"""Solvers of EDM's probability-flow ODE (``solver=`` option): one plain function and one ``Solver`` record each.

- ``euler``, ``heun``: EDM's Algorithms 1–2 over any σ(t), s(t), with churn (``edm.py``);
- ``ipndm``, ``ipndm_v``, ``deis``, ``dpmpp_2m``, ``dpmpp_3m``, ``unipc``: multistep in σ, one call per step
  (``multistep.py``);
- ``adaptive``: embedded Bogacki–Shampine 3(2) with ``rtol``/``atol`` (``adaptive.py``);
- ``euler_ancestral``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``: stochastic, fresh noise every step, ``eta`` (0: ODE),
  ``noise_scale``, ``solver_type`` (2M SDE), as k-diffusion's samplers of those names (``ancestral.py``);
- ``consistency``: the multistep sampler of consistency models (Song et al. 2023, Alg. 1; ``consistency.py``).

Every solver takes ``final_step`` and ``afs`` (``calls.py``); ``edmlab.sampling.planning`` turns a record and the
sampler's arguments into the grid and the exact number of calls. Adding a solver: its function and record in one
module, a line in ``SOLVERS``, and ``conf/solver/<name>.yaml`` (docs/adding-a-design-option.md).
"""
from edmlab.sampling.solvers.adaptive import ADAPTIVE, check_tolerance, sample_adaptive
from edmlab.sampling.solvers.ancestral import (DPMPP_2M_SDE, DPMPP_3M_SDE, EULER_ANCESTRAL, check_eta,
                                               check_noise_scale, check_solver_type, sample_dpmpp_2m_sde,
                                               sample_dpmpp_3m_sde, sample_euler_ancestral)
from edmlab.sampling.solvers.consistency import CONSISTENCY, sample_consistency
from edmlab.sampling.solvers.calls import AFS, FINAL_STEPS, CountingDenoiser, DenoiserCalls, Solver
from edmlab.sampling.solvers.edm import EULER, HEUN, Denoiser, sample_euler, sample_heun
from edmlab.sampling.solvers.flow import Churn, FlowPoint, ProbabilityFlow, sigma_grid
from edmlab.sampling.solvers.multistep import (DEIS, DPMPP_2M, DPMPP_3M, IPNDM, IPNDM_V, UNIPC, sample_deis,
                                               sample_dpmpp_2m, sample_dpmpp_3m, sample_ipndm, sample_ipndm_v,
                                               sample_unipc)

SOLVERS = {s.name: s for s in (EULER, HEUN, IPNDM, IPNDM_V, DEIS, DPMPP_2M, DPMPP_3M, UNIPC, ADAPTIVE,
                                EULER_ANCESTRAL, DPMPP_2M_SDE, DPMPP_3M_SDE, CONSISTENCY)}


def _alpha(value, solver: Solver) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"alpha must lie in (0, 1] (1 is Heun), got alpha={value}")
    return value


# The solver options of ``edmlab.sample``: name → (the value at which it is off, its check given the solver's
# record). A solver whose record does not list an option refuses any value but that one.
OPTIONS = {
    "alpha": (1.0, _alpha),
    "churn": (Churn(), lambda value, solver: value),
    "max_order": (None, lambda value, solver: solver.check_order(value)),
    "rtol": (None, lambda value, solver: check_tolerance("rtol", value)),
    "atol": (None, lambda value, solver: check_tolerance("atol", value)),
    "eta": (None, check_eta),
    "noise_scale": (1.0, check_noise_scale),
    "solver_type": (None, check_solver_type),
}

__all__ = ["SOLVERS", "OPTIONS", "Solver", "AFS", "FINAL_STEPS", "Churn", "FlowPoint", "ProbabilityFlow",
           "DenoiserCalls", "CountingDenoiser", "Denoiser", "sigma_grid", "sample_euler", "sample_heun",
           "sample_ipndm", "sample_ipndm_v", "sample_deis", "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_unipc",
           "sample_adaptive", "sample_consistency", "sample_euler_ancestral", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"]
