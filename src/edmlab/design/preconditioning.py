"""Preconditionings (EDM Table 1, "Network and preconditioning" rows; Eq. 7):

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)).

Each class wraps any raw network ``F(x_in, c_noise, class_labels, augment_labels)`` and exposes the
``sigma_min``, ``sigma_max`` and ``round_sigma`` that samplers honour. Coefficients run in float32, as in EDM.
"""
import math

import torch
from torch import nn

from edmlab.design.discretizations import iddpm_grid
from edmlab.design.schedules import VPSchedule
from edmlab.nets.edm2 import MPConv, MPFourier


class Precond(nn.Module):
    """D(x; σ) from a raw network F and the four coefficients of a subclass."""

    sigma_min = 0.0
    sigma_max = math.inf
    out_channels_factor = 1  # F's output channels per image channel (iDDPM: 2; D reads the first C)

    def __init__(self, model: nn.Module, label_dim: int | None = None):
        super().__init__()
        self.model = model
        self.label_dim = int(getattr(model, "label_dim", 0) if label_dim is None else label_dim)

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at σ."""
        raise NotImplementedError

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma = sigma.reshape(-1, *[1] * (x.ndim - 1)).expand(x.shape[0], *[1] * (x.ndim - 1))
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros(x.shape[0], self.label_dim, device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F = self.model(c_in * x, c_noise.flatten(), class_labels=class_labels, augment_labels=augment_labels)
        return c_skip * x + c_out * F[:, : x.shape[1]].to(torch.float32)


class VPPrecond(Precond):
    """Variance preserving (Song et al. 2021): c_skip = 1, c_out = −σ, c_in = 1/√(σ² + 1),
    c_noise = (M − 1)·σ⁻¹_vp(σ); supported σ from σ_vp(ε_t) to σ_vp(1)."""

    def __init__(self, model, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5, label_dim=None):
        super().__init__(model, label_dim)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.schedule = VPSchedule(beta_d, beta_min)
        self.sigma_min = float(self.schedule.sigma(epsilon_t))
        self.sigma_max = float(self.schedule.sigma(1.0))

    def coefficients(self, sigma):
        c_noise = (self.M - 1) * self.schedule.sigma_inv(sigma).to(sigma.dtype)
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise


class VEPrecond(Precond):
    """Variance exploding (Song et al. 2021): c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(½σ)."""

    def __init__(self, model, sigma_min=0.02, sigma_max=100.0, label_dim=None):
        super().__init__(model, label_dim)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def coefficients(self, sigma):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


class FlowPrecond(Precond):
    """Rectified flow's velocity parametrisation (Liu et al. 2022; Lipman et al. 2023; SD3, Esser et al. 2024) as
    EDM's Eq. 7: F predicts v = ε − x₀ from x_t = (1 − t)·x₀ + t·ε at c_noise = t.

    Derivation: with t = σ/(1 + σ) and x_t = x/(1 + σ) for EDM's unscaled x = x₀ + σ·ε, x_t = x₀ + t·(ε − x₀), so
    x₀ = x_t − t·v, i.e. D(x; σ) = x/(1 + σ) − σ/(1 + σ)·F(x/(1 + σ); t):
        c_skip = 1/(1 + σ),  c_out = −σ/(1 + σ),  c_in = 1/(1 + σ),  c_noise = σ/(1 + σ) = t.
    F's effective target (y − c_skip·x)/c_out is ε − x₀ = v. With λ(σ) = 1/c_out² (``FlowWeighting``) EDM's loss is
    the flow-matching loss ‖F − v‖². diffusers and SD3 feed the timestep 1000·t: ``c_noise_scale=1000``."""

    def __init__(self, model, c_noise_scale: float = 1.0, sigma_min=0.0, sigma_max=math.inf, label_dim=None):
        super().__init__(model, label_dim)
        self.c_noise_scale = float(c_noise_scale)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def coefficients(self, sigma):
        t = sigma / (1 + sigma)
        return 1 - t, -t, 1 - t, self.c_noise_scale * t


class iDDPMPrecond(Precond):
    """Improved DDPM (Nichol & Dhariwal 2021): c_skip = 1, c_out = −σ, c_in = 1/√(σ² + 1),
    c_noise = M − 1 − argmin_j |u_j − σ|; σ snaps to the nearest u_j, supported from u_{M−1} to u_0.

    As in NVlabs/edm, F has 2·C output channels (iDDPM's learned variance) of which D reads the first C, and the
    grid u is part of the state: a loaded grid (NVlabs builds it in float32, up to 5e-4 from the exact values)
    replaces the one computed here, and ``sigma_min``/``sigma_max`` follow it.
    """

    out_channels_factor = 2

    def __init__(self, model, C_1=0.001, C_2=0.008, M=1000, label_dim=None):
        super().__init__(model, label_dim)
        channels = getattr(model, "in_channels", None), getattr(model, "out_channels", None)
        if None not in channels and channels[1] != 2 * channels[0]:
            raise ValueError(f"iDDPMPrecond needs a network with 2× output channels (learned variance, as NVlabs/edm): "
                             f"got in_channels={channels[0]}, out_channels={channels[1]}; build it with "
                             f"out_channels={2 * channels[0]} (edmlab.io.network_file.build_denoiser does)")
        self.C_1, self.C_2, self.M = C_1, C_2, M
        self.register_buffer("u", iddpm_grid(C_1, C_2, M).to(torch.float32))

    @property
    def sigma_min(self):
        return float(self.u[self.M - 1])

    @property
    def sigma_max(self):
        return float(self.u[0])

    def _nearest(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.u.device)
        return (sigma.reshape(-1, 1) - self.u.reshape(1, -1)).abs().argmin(1).reshape(sigma.shape)

    def round_sigma(self, sigma):
        dtype = torch.as_tensor(sigma).dtype
        return self.u[self._nearest(sigma)].to(dtype)

    def coefficients(self, sigma):
        c_noise = (self.M - 1 - self._nearest(sigma)).to(sigma.dtype).to(sigma.device)
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise


class EDMPrecond(Precond):
    """EDM (Karras et al. 2022): c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/√(σ² + σ_d²),
    c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ.

    ``boundary_sigma`` = ε makes D a consistency function f (Song et al. 2023, "Consistency Models", App. C):
    c_skip = σ_d²/((σ − ε)² + σ_d²), c_out = σ_d·(σ − ε)/√(σ² + σ_d²), so that f(x, ε) = x exactly; c_in and
    c_noise stay EDM's, so an EDM network tunes into one (ECT). Its σ range then starts at ε. ε = 0 gives EDM's
    coefficients, already f(x, 0) = x (sCM's TrigFlow consistency function)."""

    def __init__(self, model, sigma_data=0.5, sigma_min=0.0, sigma_max=math.inf, label_dim=None,
                 boundary_sigma: float | None = None):
        super().__init__(model, label_dim)
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got sigma_data={sigma_data}")
        if boundary_sigma is not None and not (isinstance(boundary_sigma, (int, float)) and boundary_sigma >= 0):
            raise ValueError(f"boundary_sigma must be a noise level >= 0 (CM's ε = 0.002; 0: EDM's own coefficients, "
                             f"sCM) or null, got boundary_sigma={boundary_sigma!r}")
        self.sigma_data, self.sigma_min, self.sigma_max = float(sigma_data), float(sigma_min), float(sigma_max)
        self.boundary_sigma = None if boundary_sigma is None else float(boundary_sigma)
        if self.boundary_sigma is not None:
            self.sigma_min = max(self.sigma_min, self.boundary_sigma)

    def coefficients(self, sigma):
        sd, eps = self.sigma_data, self.boundary_sigma
        c_in, c_noise = 1 / (sd**2 + sigma**2).sqrt(), sigma.log() / 4
        if eps is None:
            return sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt(), c_in, c_noise
        return sd**2 / ((sigma - eps) ** 2 + sd**2), sd * (sigma - eps) / (sigma**2 + sd**2).sqrt(), c_in, c_noise


class EDM2Precond(EDMPrecond):
    """EDM's preconditioning (c_skip, c_out, c_in, c_noise = ¼ ln σ, as :class:`EDMPrecond`) with EDM2's uncertainty
    head u(σ) = linear(MPFourier(c_noise)) (Eq. 21, ``logvar_channels`` Fourier features), which the learned loss
    weighting λ(σ)/e^{u(σ)}·‖D − y‖² + u(σ) trains. ``forward(..., return_logvar=True)`` gives (D, u) as NVlabs'
    Precond. F is registered as ``unet`` (NVlabs/edm2's name, so its state dicts load unchanged); ``model`` is the
    same module, the name every edmlab preconditioning uses."""

    def __init__(self, model, sigma_data=0.5, sigma_min=0.0, sigma_max=math.inf, label_dim=None,
                 logvar_channels: int = 128, boundary_sigma: float | None = None):
        super().__init__(model, sigma_data, sigma_min, sigma_max, label_dim, boundary_sigma)
        self.unet = self._modules.pop("model")
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    @property
    def model(self):
        return self.unet

    def logvar(self, sigma) -> torch.Tensor:
        """u(σ) [N] for σ [N] (or a scalar)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.logvar_fourier.freqs.device).reshape(-1)
        c_noise = self.coefficients(sigma)[3]
        return self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1)

    def forward(self, x, sigma, class_labels=None, augment_labels=None, return_logvar: bool = False):
        D = super().forward(x, sigma, class_labels=class_labels, augment_labels=augment_labels)
        if not return_logvar:
            return D
        return D, self.logvar(sigma).expand(x.shape[0]).reshape(-1, *[1] * (x.ndim - 1))
