"""Measured work-normalized variance (docs/theory.md §7, §10): independent replications at frozen parameters.

This streams the replications through Welford (memory of one estimate, whatever ``R``), for the demo and for
models too large to keep ``R`` estimates. :func:`carv_adapt.bench.replicate` keeps them (as a Gram matrix),
which is what bootstrap intervals and side-by-side interleaving need.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.plan import Plan
from carv_adapt.stats.welford import Welford
from carv_adapt.variance import ecm

__all__ = ["Measurement", "measure_W"]


@dataclass(frozen=True)
class Measurement:
    """``W = tr Cov(G_hat) x seconds per estimate`` of one fixed policy, from ``R`` replications."""

    variance: float
    relative_se: float
    seconds_per_estimate: float
    R: int
    N: int
    K: int

    @property
    def W(self) -> float:
        return self.variance * self.seconds_per_estimate

    def ecm_against(self, baseline: Measurement) -> float:
        """``W_baseline / W`` (:func:`carv_adapt.variance.ecm`)."""
        return ecm(baseline.W, self.W)


def measure_W(estimate: Callable[[Plan], Tensor], policy: HierarchicalEstimator, R: int) -> Measurement:
    """Run ``R`` independent estimates ``estimate(plan)`` (each returns the flattened final gradient) under
    ``policy``'s plans; variance by Welford, compute by wall time per estimate (plan drawing included)."""
    acc, seconds = Welford(), 0.0
    for _ in range(R):
        t0 = time.perf_counter()
        g = estimate(policy.plan())
        seconds += time.perf_counter() - t0
        acc.update(g)
    return Measurement(acc.variance(), acc.relative_se(), seconds / R, R, policy.N, policy.K)
