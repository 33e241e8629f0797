"""How the controller's own cost grows: seconds per ``plan`` / ``observe`` / refit and the peak extra memory
of the whole loop, as the number of timestep bins (10 to 1000) and the contribution dimension grow.

Contributions are synthetic (no workload cost). Peak memory is what the controller adds on top of the
contributions it is handed: on CUDA ``torch.cuda.max_memory_allocated`` around the loop; on the CPU the
growth of the process's peak resident set over the loop (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` just before the loop), each configuration in a fresh process.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import torch

from carv_adapt.controller import AdaptiveController

__all__ = ["measure_overhead", "scaling_table"]


def _rss_peak_bytes(reset: bool = False) -> int:
    """Peak resident set of this process (Linux, resettable); ``ru_maxrss`` elsewhere (not resettable)."""
    import resource  # Unix only

    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_overhead(
    num_bins: int, dim: int, N: int = 4, K: int = 8, steps: int = 20, device: str = "cpu"
) -> dict[str, float]:
    """Mean seconds per ``plan``, ``observe`` and ``refit`` and the peak extra bytes over ``steps`` steps."""
    torch.set_num_threads(1)
    ctrl = AdaptiveController(
        num_timesteps=1000,
        num_bins=num_bins,
        batch_size=N,
        warmup_k=(K,),
        k_min=K,
        k_max=K,
        warmup_steps=1,
        refit_every=10**9,
        smoothing=1,
    )
    f = torch.randn(N, K, dim, device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_peak_bytes(reset=True)
    t_plan = t_obs = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        plan = ctrl.plan()
        t1 = time.perf_counter()
        ctrl.observe(plan, f, costs={"upstream": 0.01, "teacher": 0.001 * K})
        if cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        ctrl.step()
        t_plan, t_obs = t_plan + t1 - t0, t_obs + t2 - t1
    t0 = time.perf_counter()
    for _ in range(3):
        ctrl.refit()
    t_refit = (time.perf_counter() - t0) / 3
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_peak_bytes() - base
    return {
        "bins": num_bins,
        "dim": dim,
        "N": N,
        "K": K,
        "plan_ms": 1e3 * t_plan / steps,
        "observe_ms": 1e3 * t_obs / steps,
        "refit_ms": 1e3 * t_refit,
        "peak_extra_mb": max(peak, 0) / 2**20,
        "contributions_mb": f.numel() * f.element_size() / 2**20,
    }


def _worker(args: tuple[Any, ...]) -> dict[str, float]:
    return measure_overhead(*args)


def scaling_table(
    bins: tuple[int, ...] = (10, 100, 1000),
    dims: tuple[int, ...] = (256, 65536, 1048576),
    steps: int = 20,
    device: str = "cpu",
) -> list[dict[str, float]]:
    """One row per ``(bins, dim)``; CPU rows each run in a fresh spawned process (see module doc)."""
    rows = []
    for b in bins:
        for d in dims:
            s = steps if d < 2**20 else max(4, steps // 5)
            if device == "cpu":
                with mp.get_context("spawn").Pool(1) as pool:
                    rows.append(pool.apply(_worker, ((b, d, 4, 8, s, device),)))
            else:
                rows.append(measure_overhead(b, d, 4, 8, s, device))
    return rows
