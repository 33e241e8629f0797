"""Measured work-normalized variance from independent replications, and bootstrap intervals for ECM (theory.md §10).

Each policy's ``R`` replications at frozen parameters are reduced to their centred Gram matrix (``R x R``)
and per-replication seconds, which is all a bootstrap resample needs: the trace variance of the resampled
multiset ``I`` is ``(sum_{i in I} G_ii - sum_{i,j in I} G_ij / R) / (R - 1)``. It holds the ``R`` estimates
at once (``R x P``); :func:`carv_adapt.measure.measure_W` streams one policy in ``O(P)`` memory instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.plan import Plan

__all__ = ["Replications", "replicate", "ecm_interval"]


@dataclass(frozen=True)
class Replications:
    """``R`` independent estimates of one policy: centred Gram matrix (``R x R``) and seconds (``R``)."""

    gram: np.ndarray
    seconds: np.ndarray
    N: int
    K: int

    @property
    def R(self) -> int:
        return int(self.seconds.shape[0])

    @property
    def variance(self) -> float:
        """Unbiased ``tr Cov(G_hat)``."""
        return _variance(self.gram, np.arange(self.R))

    @property
    def seconds_per_estimate(self) -> float:
        return float(self.seconds.mean())

    @property
    def W(self) -> float:
        """Measured ``W = tr Cov(G_hat) x seconds per estimate``."""
        return self.variance * self.seconds_per_estimate

    @property
    def relative_se(self) -> float:
        """Standard error of :attr:`variance` relative to it (from the spread of squared deviations)."""
        d = np.diag(self.gram)
        return float(d.std(ddof=1) / math.sqrt(self.R) / d.mean()) if d.mean() > 0 else math.nan


def _variance(gram: np.ndarray, idx: np.ndarray) -> float:
    R = idx.shape[0]
    sub = gram[np.ix_(idx, idx)]
    return float((np.trace(sub) - sub.sum() / R) / (R - 1))


def replicate(
    estimate: Callable[[Plan], Tensor],
    policies: dict[str, HierarchicalEstimator],
    R: int,
    fixed_seconds: float = 0.0,
    counts: dict[str, int] | None = None,
) -> dict[str, Replications]:
    """``R`` estimates per policy, interleaved round-robin so that machine drift hits every policy alike.

    ``estimate(plan)`` returns the flattened final estimate; its wall time (plan drawing included) plus
    ``fixed_seconds`` (per-step work a training step pays whatever the policy, measured elsewhere) is the
    compute of one estimate. ``counts`` gives some policies more (or fewer) than ``R``: every round runs each
    policy not yet done, so the extra rounds of the others are still interleaved among themselves.
    """
    n = {name: (counts or {}).get(name, R) for name in policies}
    bad = {k: v for k, v in n.items() if v < 3}
    if bad:
        raise ValueError(f"need >= 3 replications per policy, got {bad!r}")
    samples: dict[str, list[Tensor]] = {k: [] for k in policies}
    seconds: dict[str, list[float]] = {k: [] for k in policies}
    for r in range(max(n.values(), default=0)):
        for name, pol in policies.items():
            if r >= n[name]:
                continue
            t0 = time.perf_counter()
            g = estimate(pol.plan())
            seconds[name].append(time.perf_counter() - t0 + fixed_seconds)
            samples[name].append(g.detach().reshape(-1).double().cpu())
    out = {}
    for name, pol in policies.items():
        x = torch.stack(samples[name])
        x = x - x.mean(dim=0, keepdim=True)
        out[name] = Replications((x @ x.T).numpy(), np.asarray(seconds[name]), pol.N, pol.K)
    return out


def ecm_interval(
    baseline: Replications, policy: Replications, confidence: float = 0.9, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``(ECM, low, high)``: ``W_baseline / W_policy`` with a BCa bootstrap interval over both policies'
    replications (resampled independently; ``scipy.stats.bootstrap``)."""
    from scipy.stats import bootstrap

    def stat(ib: np.ndarray, ip: np.ndarray) -> float:
        ib, ip = ib.astype(int), ip.astype(int)
        wb = _variance(baseline.gram, ib) * baseline.seconds[ib].mean()
        wp = _variance(policy.gram, ip) * policy.seconds[ip].mean()
        return wb / wp if wp > 0 else math.inf

    point = stat(np.arange(baseline.R), np.arange(policy.R))
    lo = hi = math.nan
    for method in ("BCa", "percentile"):  # BCa can degenerate on tiny R; percentile cannot
        res = bootstrap(
            (np.arange(baseline.R), np.arange(policy.R)),
            stat,
            paired=False,
            vectorized=False,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            break
    return point, lo, hi
