"""Replays of a logged run for hyper-parameter tuning: a synthetic workload with the logged statistics.

The record's per-bin profile ``m_b``, ``sigma_B^2``, ``M2`` and costs define a :class:`SyntheticNested`
workload with exactly those statistics; a candidate configuration runs the real controller on it, and its
measured work-normalized variance is the mean over steps of the exact ``W`` of the policy it planned with
(warm-up and adaptation lag included), averaged over seeds, with the seeds' standard error as its noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from carv_adapt.controller import AdaptiveController
from carv_adapt.errors import ConfigError
from carv_adapt.plan import Refit
from carv_adapt.proposals import TargetMeasure
from carv_adapt.variance import work_normalized_variance
from carv_adapt.workloads.synthetic import SyntheticNested

__all__ = ["synthetic_from_record", "replay_objective"]


def synthetic_from_record(record: Refit, num_timesteps: int, D: int = 16) -> SyntheticNested:
    """A nested workload whose ``m_b``, ``sigma_B^2``, ``M2``, ``c_out``, ``c_in`` are the record's."""
    M2 = float(record.extra.get("M2", math.nan))
    if not (math.isfinite(M2) and record.sigma_b2 > 0 and math.isfinite(record.sigma_b2)):
        raise ConfigError(f"record at step {record.step} lacks positive sigma_b2 / finite M2 for a replay")
    target = TargetMeasure(num_timesteps, record.bin_edges[0], record.bin_edges[-1] - 1)
    edges = torch.tensor(record.bin_edges)
    m = torch.tensor(record.profile, dtype=torch.float64)
    s = ((m - M2).clamp_min(1e-12 * float(m.max())) / D).sqrt()
    sb = math.sqrt(record.sigma_b2 / D)
    mu0 = math.sqrt(max(M2 - record.sigma_b2, 0.0) / D)
    return SyntheticNested(
        target, edges, s, D=D, sb=sb, mu0=mu0, c_out=record.c_out, c_in=max(record.c_in, 1e-12), c_call=0.0
    )


def replay_objective(
    record: Refit, num_timesteps: int, steps: int = 200, seeds: int = 3, base: dict[str, Any] | None = None
) -> Callable[[dict[str, float]], tuple[float, float]]:
    """``params -> (mean W over steps and seeds, its standard error)`` on the record's replay."""
    wl = synthetic_from_record(record, num_timesteps)

    def objective(params: dict[str, float]) -> tuple[float, float]:
        cfg = dict(
            num_timesteps=num_timesteps,
            t_min=wl.target.t_min,
            t_max=wl.target.t_max,
            batch_size=record.N,
            warmup_steps=10,
            stratification="iid",
        )
        cfg.update(base or {})
        ints = {"num_bins", "smoothing", "refit_every", "k_max", "warmup_steps", "k_cooldown"}
        cfg.update({k: int(v) if k in ints else float(v) for k, v in params.items()})
        values = []
        for seed in range(seeds):
            ctrl = AdaptiveController(seed=seed, **cfg)
            g = torch.Generator().manual_seed(10_000 + seed)
            total = 0.0
            for _ in range(steps):
                plan = ctrl.plan()
                sw = wl.sigma_w2_pmf(ctrl.proposal.pmf())
                total += work_normalized_variance(wl.sigma_b2, sw, plan.K, wl.c_out, wl.c_in)
                ctrl.observe(plan, wl.contributions(plan, g), costs=wl.costs(plan))
                ctrl.step()
            values.append(total / steps)
        v = torch.tensor(values, dtype=torch.float64)
        se = float(v.std() / math.sqrt(seeds)) if seeds > 1 else 0.0
        return float(v.mean()), se

    return objective
