"""Post-hoc EMA (EDM2, Karras et al. 2024, §3 and Appendix C): track power-function EMAs of the weights during
training, store their snapshots, and afterwards reconstruct the EMA of any other length by least squares.

A power-function EMA at training time t averages the weights θ(τ), τ ≤ t, with the profile
    p_γ,t(τ) = (γ + 1)·τ^γ / t^(γ+1)                                           (EDM2 Eq. 121),
whose relative standard deviation is
    σ_rel = √((γ + 1) / ((γ + 2)²·(γ + 3)))                                     (EDM2 Eq. 123),
between 0 (γ → ∞) and 1/√12 (γ = 0, the uniform average). It is tracked with
    θ̂ ← β·θ̂ + (1 − β)·θ,   β = (1 − Δt/t)^(γ + 1)                            (EDM2 Eq. 127),
t the images seen after the step and Δt the batch. Snapshots of profiles (t_i, γ_i) are combined as
Σ_i x_i·θ̂_i with x = A⁻¹b, A_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p_target⟩ (EDM2 Algorithm 3), the inner products in
closed form (EDM2 Eq. 151), x normalised to sum to 1.

Snapshots on disk: ``edmlab.io.snapshots``; ``python -m edmlab.cli.phema <run> --std 0.03,0.06,0.12`` writes
``<run>/network-phema-<std>.pt``.
"""
import math

import numpy as np


STD_MAX = 1 / math.sqrt(12)


def check_std(std: float) -> float:
    std = float(std)
    if not 0 < std < STD_MAX:
        raise ValueError(f"EMA std={std} is outside (0, {STD_MAX:.4f}): σ_rel = 1/√12 is the uniform average over "
                         f"all of training, the longest a power-function EMA can be; use e.g. 0.05 or 0.10")
    return std


def std_to_exp(std: float) -> float:
    """γ of a relative std: the largest real root of γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0, which is Eq. 123
    squared and multiplied out (EDM2 Eq. 126, Algorithm 2)."""
    s = check_std(std) ** -2
    return float(np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max())


def power_function_beta(std: float, t: float, delta_t: float) -> float:
    """β = (1 − Δt/t)^(γ + 1) (EDM2 Eq. 127), t the images seen after the step, Δt its batch."""
    return (1 - delta_t / t) ** (std_to_exp(std) + 1)


def profile_inner_product(t_a, std_a, t_b, std_b) -> np.ndarray:
    """⟨p_a, p_b⟩ = ∫ p_a·p_b dτ = (γ_a + 1)(γ_b + 1)·min(t_a, t_b)^(γ_a+γ_b+1) / ((γ_a + γ_b + 1)·t_a^(γ_a+1)·t_b^(γ_b+1))
    (EDM2 Eq. 151), broadcast over arrays of times and stds."""
    t_a, std_a, t_b, std_b = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (t_a, std_a, t_b, std_b)))
    g_a = np.vectorize(std_to_exp, otypes=[np.float64])(std_a)
    g_b = np.vectorize(std_to_exp, otypes=[np.float64])(std_b)
    t_min = np.minimum(t_a, t_b)
    log = ((g_a + g_b + 1) * np.log(t_min) - (g_a + 1) * np.log(t_a) - (g_b + 1) * np.log(t_b))
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * np.exp(log)


def posthoc_coefficients(t_in, std_in, t_out, std_out) -> np.ndarray:
    """Weights x [inputs, outputs] of the stored profiles (t_in, std_in) that best give (t_out, std_out) in L²:
    A x = b with the Gram matrix A and b the inner products with the targets, each column normalised to sum 1."""
    t_in, std_in = (np.asarray(v, dtype=np.float64).reshape(-1, 1) for v in np.broadcast_arrays(t_in, std_in))
    t_out, std_out = (np.asarray(v, dtype=np.float64).reshape(1, -1) for v in np.broadcast_arrays(t_out, std_out))
    A = profile_inner_product(t_in, std_in, t_in.T, std_in.T)
    b = profile_inner_product(t_in, std_in, t_out, std_out)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    return x / x.sum(axis=0, keepdims=True)


# --- snapshots in a run directory -------------------------------------------------------------------------------


def reconstruct(snapshots: list[dict], stds) -> list[dict]:
    """State dicts of the post-hoc EMAs of relative width ``stds`` at the last snapshot's time: Σ_i x_i·θ̂_i over
    every stored (snapshot, std) profile, accumulated in float64; buffers come from the last snapshot."""
    stds = [check_std(s) for s in stds]
    t_in = [s["nimg"] for s in snapshots for _ in s["stds"]]
    std_in = [std for s in snapshots for std in s["stds"]]
    states = [sd for s in snapshots for sd in s["state_dicts"]]
    last = snapshots[-1]
    x = posthoc_coefficients(t_in, std_in, [last["nimg"]] * len(stds), stds)
    out = []
    for j in range(len(stds)):
        state = {}
        for key, value in last["state_dicts"][0].items():
            if value.is_floating_point():
                acc = sum(float(x[i, j]) * sd[key].double() for i, sd in enumerate(states))
                state[key] = acc.to(value.dtype)
            else:
                state[key] = value.clone()
        out.append(state)
    return out

