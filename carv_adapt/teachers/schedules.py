"""Variance-preserving (DDPM) noise schedules as pure functions, matching diffusers' ``DDPMScheduler``."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError

__all__ = ["ddpm_alphas_cumprod"]


def ddpm_alphas_cumprod(
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
) -> Tensor:
    """``alphabar_t`` for ``t = 0..T-1`` (float64), as diffusers' ``DDPMScheduler`` builds it."""
    if num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be >= 1, got {num_timesteps!r}")
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float32).double()
    elif beta_schedule == "scaled_linear":
        betas = (torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float32) ** 2).double()
    elif beta_schedule == "squaredcos_cap_v2":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), 0.999) for i in range(num_timesteps)],
            dtype=torch.float32,
        ).double()
    else:
        raise ConfigError(
            f"beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2', got {beta_schedule!r}"
        )
    # diffusers accumulates in float32; do the same so tables agree bit for bit at float32.
    return torch.cumprod(1.0 - betas.float(), dim=0).double()
