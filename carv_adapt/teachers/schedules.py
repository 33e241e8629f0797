"""Variance-preserving (DDPM) noise schedules as pure functions, matching diffusers' ``DDPMScheduler``.

No diffusers import here (STYLE §15): the analytic teachers need the table, not the library.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError

__all__ = ["ddpm_alphas_cumprod"]

_COSINE_MAX_BETA = 0.999  # diffusers' cap in ``betas_for_alpha_bar``; keeps alphabar_{T-1} > 0


def ddpm_alphas_cumprod(
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
) -> Tensor:
    """``alphabar_t = prod_{s <= t} (1 - beta_s)`` for ``t = 0..T-1``, as ``DDPMScheduler`` builds it.

    Args:
        num_timesteps: ``T``, the number of training timesteps.
        beta_start, beta_end: end points of the (scaled) linear beta ramp; ignored by the cosine schedule,
            as in diffusers.
        beta_schedule: ``"linear"`` (DDPM), ``"scaled_linear"`` (latent diffusion: linear in ``sqrt(beta)``)
            or ``"squaredcos_cap_v2"`` (the Glide/iDDPM cosine schedule, betas capped at 0.999).

    Returns:
        ``T``-dim float64 Tensor. Betas and the cumulative product are computed in float32 exactly as
        diffusers does, so ``.float()`` of the result equals ``DDPMScheduler(...).alphas_cumprod`` bit for
        bit: an analytic teacher and a diffusers teacher built on the same config share one table.
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be an int >= 1, got {num_timesteps!r}")
    if beta_schedule in ("linear", "scaled_linear") and not 0 < beta_start <= beta_end < 1:
        raise ConfigError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start!r}, beta_end={beta_end!r}")
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        # Python floats (float64) per step, then float32: the order of operations diffusers uses.
        betas = torch.tensor(
            [
                min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), _COSINE_MAX_BETA)
                for i in range(num_timesteps)
            ],
            dtype=torch.float32,
        )
    else:
        raise ConfigError(
            f"beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2', got {beta_schedule!r}"
        )
    return torch.cumprod(1.0 - betas, dim=0).double()
