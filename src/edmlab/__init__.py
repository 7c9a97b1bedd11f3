"""edmlab: the design space of diffusion models (Karras et al. 2022, "EDM") as composable, tested pieces.

The top of the layers: ``sample``, ``plan``, ``load`` and the design table's units, importable as ``edmlab.X``."""
from edmlab.data.mixture import GaussianMixture
from edmlab.design.discretizations import (DEFAULT_SIGMA_RANGE, discretize, edm_sigmas, iddpm_grid, iddpm_sigmas,
                                           ve_sigmas, vp_sigmas)
from edmlab.design.loss import DenoisingLoss, LossOutput
from edmlab.design.loss_weighting import EDMWeighting, FlowWeighting, InverseVariance
from edmlab.design.preconditioning import (EDM2Precond, EDMPrecond, FlowPrecond, Precond, VEPrecond, VPPrecond,
                                           iDDPMPrecond)
from edmlab.design.scalings import FlowScaling, NoScaling, VPScaling
from edmlab.design.schedules import FlowSchedule, LinearSchedule, VESchedule, VPSchedule
from edmlab.design.training_noise import (EDMNoise, LogitNormalNoise, ModeNoise, UniformTNoise, VENoise,
                                           VPNoise)
from edmlab.io.network_file import load, save_network
from edmlab.sampling.likelihood import bits_per_dim, dequantize, log_likelihood
from edmlab.sampling.planning import Plan, make_flow, nfe, plan, sigma_range, sigma_steps, time_steps
from edmlab.sampling.rng import SeedStreams
from edmlab.sampling.sampler import sample
from edmlab.sampling.solvers import (SOLVERS, Churn, CountingDenoiser, ProbabilityFlow, sample_adaptive, sample_deis,
                                     sample_dpmpp_2m, sample_dpmpp_3m, sample_euler, sample_heun, sample_ipndm,
                                     sample_ipndm_v, sample_unipc)
from edmlab.sampling.solvers.ancestral import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_euler_ancestral

__all__ = [
    "sample", "load", "save_network", "GaussianMixture", "time_steps", "sigma_steps", "sigma_range", "make_flow",
    "SeedStreams", "LinearSchedule", "VESchedule", "VPSchedule", "FlowSchedule", "NoScaling", "VPScaling",
    "FlowScaling", "FlowPrecond", "FlowWeighting", "LogitNormalNoise", "ModeNoise", "UniformTNoise",
    "discretize", "edm_sigmas", "ve_sigmas", "vp_sigmas", "iddpm_sigmas", "iddpm_grid",
    "Precond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond", "EDM2Precond", "DenoisingLoss", "LossOutput",
    "VPNoise", "VENoise", "EDMNoise", "InverseVariance", "EDMWeighting", "DEFAULT_SIGMA_RANGE",
    "SOLVERS", "Churn", "ProbabilityFlow", "sample_euler", "sample_heun", "nfe", "plan", "Plan", "CountingDenoiser",
    "sample_ipndm", "sample_ipndm_v", "sample_deis", "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_unipc",
    "sample_adaptive", "log_likelihood", "bits_per_dim", "dequantize", "sample_euler_ancestral", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde",
]
