"""Bytes per inner draw, for the controller's memory cap (``memory_cap_bytes`` / ``inner_bytes``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from carv_adapt.errors import ConfigError

__all__ = ["measure_inner_bytes"]


def measure_inner_bytes(
    run_inner: Callable[[int], Any], device: torch.device | str = "cuda", k1: int = 1, k2: int = 8
) -> int:
    """Marginal peak GPU memory of one inner draw: run ``run_inner(k)`` (your teacher step on ``k`` inner draws)
    at two sizes and difference the peaks, so fixed buffers do not count."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(f"measure_inner_bytes needs a CUDA device, got {device!r}; on CPU set inner_bytes yourself")
    if not 1 <= k1 < k2:
        raise ConfigError(f"need 1 <= k1 < k2, got k1={k1!r}, k2={k2!r}")
    peaks = []
    for k in (k1, k2):
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        run_inner(k)
        torch.cuda.synchronize(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) - base)
    return max(1, math.ceil((peaks[1] - peaks[0]) / (k2 - k1)))
