"""edmlab: the design space of diffusion models (Karras et al. 2022, "EDM") as composable, tested pieces."""
from .discretizations import DEFAULT_SIGMA_RANGE, discretize, edm_sigmas, iddpm_grid, iddpm_sigmas, ve_sigmas, vp_sigmas
from .export import load, save_network
from .loss import DenoisingLoss, LossOutput
from .loss_weighting import EDMWeighting, InverseVariance
from .mixture import GaussianMixture
from .preconditioning import EDMPrecond, Precond, VEPrecond, VPPrecond, iDDPMPrecond
from .rng import SeedStreams
from .sampling import Plan, make_flow, plan, sample, sigma_range, sigma_steps, time_steps
from .scalings import NoScaling, VPScaling
from .schedules import LinearSchedule, VESchedule, VPSchedule
from .solvers import (SOLVERS, Churn, CountingDenoiser, ProbabilityFlow, nfe, sample_adaptive, sample_deis, sample_dpmpp_2m,
                      sample_dpmpp_3m, sample_euler, sample_heun, sample_ipndm, sample_ipndm_v, sample_unipc)
from .training_noise import EDMNoise, VENoise, VPNoise

__all__ = [
    "sample", "load", "save_network", "GaussianMixture", "time_steps", "sigma_steps", "sigma_range", "make_flow", "SeedStreams",
    "LinearSchedule", "VESchedule", "VPSchedule", "NoScaling", "VPScaling",
    "discretize", "edm_sigmas", "ve_sigmas", "vp_sigmas", "iddpm_sigmas", "iddpm_grid",
    "Precond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond", "DenoisingLoss", "LossOutput",
    "VPNoise", "VENoise", "EDMNoise", "InverseVariance", "EDMWeighting", "DEFAULT_SIGMA_RANGE",
    "SOLVERS", "Churn", "ProbabilityFlow", "sample_euler", "sample_heun", "nfe", "plan", "Plan", "CountingDenoiser", "sample_ipndm",
    "sample_ipndm_v", "sample_deis", "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_unipc", "sample_adaptive",
]
