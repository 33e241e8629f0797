"""When to take a split-half probe (docs/theory.md §13.6): a pure rule on the probe statistics and costs."""

from __future__ import annotations

import math
from typing import Any

from carv_adapt.config import ControllerConfig

__all__ = ["probe_due"]


def probe_due(
    step: int, last_probe: int | None, K: int, probe_stats: Any, costs: Any, config: ControllerConfig
) -> bool:
    """Whether to probe this step (docs/theory.md §13.6): in parameter space with ``K >= 2``, the first time, every
    ``probe_every_max`` steps (or as often as ``probe_budget`` allows, if a probe is dearer than that), and while
    the probe's estimates are looser than ``probe_tolerance`` (their relative standard error grown by the
    forgetting since the last probe) and the probes' share of compute, this probe included, stays within
    ``probe_budget``. ``probe_stats`` / ``costs`` may be
    callables, reduced only if still undecided."""
    sched = config.policy.schedule
    if config.space != "parameter" or K < 2:
        return False
    if last_probe is None:
        return True
    # Statistics last fed s steps ago hold forgetting^s of their evidence, but forgetting scales every sum alike and
    # leaves their computed error unchanged: the tolerance shrinks instead, by forgetting^(s/2) (docs/theory.md §13.6).
    tol = sched.probe_tolerance * config.policy.safeguards.forgetting ** ((step - last_probe) / 2)
    # Before probe_every_max steps (the floor interval's least) only loose statistics call for a probe: tight ones
    # answer without reducing the costs, which this rule is asked for at every step.
    if step - last_probe < sched.probe_every_max and not _loose(probe_stats, tol):
        return False
    costs = costs() if callable(costs) else costs
    policy_cost = costs.c_0 + config.policy.allocation.N * (costs.c_out + K * costs.c_in)
    if step - last_probe >= _floor_interval(sched, costs.probe_step, policy_cost):
        return True
    if costs.steps > 0:
        # The share once this probe is paid (at the mean cost of the earlier ones): one probe is a large part of a
        # step, so testing the share before it let the share sit a probe's jump above the budget.
        after = (costs.measurement * costs.steps + costs.probe_step) / (costs.steps + 1)
        if after > sched.probe_budget * (policy_cost + after):
            return False
    return _loose(probe_stats, tol)


def _loose(probe_stats: Any, tolerance: float) -> bool:
    """Whether the probe's between or within estimate is looser than ``tolerance`` (relative standard error)."""
    probe_stats = probe_stats() if callable(probe_stats) else probe_stats
    rel = [
        se / abs(v) if v != 0 and math.isfinite(v) else math.inf
        for v, se in ((probe_stats.sigma_b2, probe_stats.sigma_b2_se), (probe_stats.sigma_w2, probe_stats.sigma_w2_se))
    ]
    return max(rel) > tolerance


def _floor_interval(sched: Any, probe_cost: float, policy_cost: float) -> int:
    """Steps between the probes that keep the statistics fresh: ``probe_every_max``, or more where one probe
    every ``probe_every_max`` steps alone would take more than ``probe_budget`` of the compute (a probe dearer
    than ``probe_every_max * budget / (1 - budget)`` steps): the interval ``I`` at which ``q / I`` is the budget's
    share of ``C + q / I``, for a probe of mean cost ``q`` and a step of policy cost ``C``."""
    b = sched.probe_budget
    if probe_cost <= 0.0 or policy_cost <= 0.0 or b >= 1.0:
        return sched.probe_every_max
    return max(sched.probe_every_max, math.ceil(probe_cost * (1.0 - b) / (b * policy_cost)))
