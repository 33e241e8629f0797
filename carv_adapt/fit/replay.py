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
from carv_adapt.variance import is_second_moment, work_normalized_variance
from carv_adapt.workloads.synthetic import SyntheticNested

__all__ = ["synthetic_from_record", "replay_objective"]


def synthetic_from_record(record: Refit, num_timesteps: int | None = None, D: int = 16) -> SyntheticNested:
    """A nested workload with ``record``'s statistics, all in the record's own space.

    ``sigma_B^2`` and ``sigma_W^2`` (under the record's proposal) are the record's, in the space its decision
    used (parameter space for probed runs); the profile the decision read (output space, or calibrated to the
    parameter space by per-draw probes) only shapes ``sigma_W^2`` over ``t``
    (``s(t)^2 ∝ m(t) - M2``, scaled so the record's proposal gets the record's ``sigma_W^2``). Costs are the
    record's ``c_out``, ``c_in`` and the fixed ``c_0`` (charged as a per-step teacher-call cost).
    """
    from carv_adapt.fit.closed_form import record_statistics

    stats = record_statistics(record)
    T = num_timesteps if num_timesteps is not None else record.num_timesteps
    if T is None:
        raise ConfigError(f"record at step {record.step} does not say num_timesteps; pass it explicitly")
    # A profile calibrated to the parameter space (docs/theory.md §7.9) is what the decision read, with the probes' M2.
    cal = stats.param_profile() if stats.param is not None else None
    m, M2 = (stats.m, stats.proxy.M2) if cal is None else (cal[0], stats.param.M2)  # type: ignore[union-attr]
    M2 = M2 if math.isfinite(M2) else 0.0
    sb2, sw2 = record.sigma_b2, record.sigma_w2
    if not (math.isfinite(sb2) and sb2 > 0 and math.isfinite(sw2) and sw2 > 0):
        raise ConfigError(
            f"record at step {record.step} has sigma_b2={sb2!r}, sigma_w2={sw2!r}: a replay needs both positive"
        )
    target = TargetMeasure(T, record.bin_edges[0], record.bin_edges[-1] - 1)
    edges = torch.tensor(record.bin_edges)
    # The synthetic's m and M2 are the proxy's scaled by kappa, so sigma_W^2(p) = kappa (S(p) - M2) for every p:
    # the record's value under its own proposal, and the proxy's shape elsewhere (as the decision assumes).
    shape = (m - M2).clamp_min(1e-12 * float(m.max()))
    p_rec = torch.tensor(record.proposal, dtype=torch.float64)
    kappa = sw2 / (float(is_second_moment(stats.pi_b, p_rec, m)) - M2)
    if not (math.isfinite(kappa) and kappa > 0):
        raise ConfigError(f"record at step {record.step}: its profile does not resolve a within variance to replay")
    return SyntheticNested(
        target,
        edges,
        (kappa * shape / D).sqrt(),
        D=D,
        sb=math.sqrt(sb2 / D),
        mu0=math.sqrt(max(kappa * M2 - sb2, 0.0) / D),
        c_out=record.c_out,
        c_in=max(record.c_in, 1e-12),
        c_call=max(record.c_0, 0.0),
    )


def replay_objective(
    record: Refit,
    num_timesteps: int | None = None,
    steps: int = 200,
    seeds: int = 3,
    base: dict[str, Any] | None = None,
) -> Callable[[dict[str, float]], tuple[float, float]]:
    """``params -> (mean W over steps and seeds, its standard error)`` on the record's replay.

    W charges the fixed cost per outer draw (``c_out + c_0 / N``), as the controller's fixed-batch model does.
    """
    wl = synthetic_from_record(record, num_timesteps)
    c_out_eff = wl.c_out + wl.c_call / record.N

    def objective(params: dict[str, float]) -> tuple[float, float]:
        cfg = dict(
            num_timesteps=wl.target.num_timesteps,
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
                total += work_normalized_variance(wl.sigma_b2, sw, plan.K, c_out_eff, wl.c_in)
                ctrl.observe(plan, wl.contributions(plan, g), costs=wl.costs(plan))
                ctrl.step()
            values.append(total / steps)
        v = torch.tensor(values, dtype=torch.float64)
        se = float(v.std() / math.sqrt(seeds)) if seeds > 1 else 0.0
        return float(v.mean()), se

    return objective
