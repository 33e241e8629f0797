"""The "+CV" variant of the ablation (docs/theory.md §14): the "+strat" policy plus a workload's control variate,
its per-bin coefficients fitted on an output-space pilot at a checkpoint, and the paired final-space comparison."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from carv_adapt.control_variate import with_coefficients
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.plan import Plan, resolve_stratification
from carv_adapt.proposals.base import Proposal, bin_index
from carv_adapt.stats.control import ControlVariateStats

__all__ = ["ControlledEstimator", "control_variate_pilot", "paired_cv"]


class ControlledEstimator(HierarchicalEstimator):
    """A fixed policy whose plans carry fixed per-bin control-variate coefficients (docs/theory.md §14)."""

    def __init__(self, proposal: Proposal, N: int, K: int, strat: str, seed: int, beta_b: Any, edges: Any) -> None:
        super().__init__(proposal, N=N, K=K, stratification=resolve_stratification(strat, K), seed=seed)
        self.beta_b, self.edges = beta_b, edges

    def plan(self) -> Plan:
        p = super().plan()
        return p if self.beta_b is None else with_coefficients(p, self.beta_b, self.edges)


def control_variate_pilot(
    cv_draws: Any, state: dict, outer: int, proposal: Proposal, N: int, K: int, edges: Any,
    pi_b: Any, p_b: Any, seed: int,
) -> tuple[ControlledEstimator, dict[str, Any]]:  # fmt: skip
    """Fit the per-bin coefficients of the "+CV" policy (the "+strat" one plus the control) on ``outer``
    outer draws of output-space contributions at frozen ``state``, drawn as that policy draws them; report per bin
    the coefficient, the correlation of ``f - mu_g`` with the control, the variance removed per draw and the
    uncontrolled second moment, and the share of the proposal's second moment ``sum pi^2/p m`` removed."""
    draws = cv_draws(state)
    stats = ControlVariateStats(edges)
    pol = ControlledEstimator(proposal, N, K, "stratified", seed, None, edges)
    t0 = time.perf_counter()
    for _ in range(max(1, math.ceil(outer / N))):
        plan = pol.plan()
        f, g, mu = draws(plan)
        stats.apply(bin_index(plan.t, edges), None, f, g, mu)
    est = stats.compute()
    w = pi_b.double() ** 2 / p_b.double()
    seen = est.counts > 0
    share = float((w * est.removed)[seen].sum() / (w * est.m)[seen].sum()) if bool(seen.any()) else math.nan
    report = {
        "space": "output (latent), rho-free",
        "pilot_draws": int(stats.count.sum()),
        "pilot_seconds": time.perf_counter() - t0,
        "beta": est.beta.tolist(),
        "correlation": est.correlation.tolist(),
        "removed_per_draw": est.removed.tolist(),
        "m": est.m.tolist(),
        "counts": est.counts.tolist(),
        "share_of_second_moment_removed": share,
    }
    return ControlledEstimator(proposal, N, K, "stratified", seed + 1, est.beta, edges), report


def paired_cv(estimate: Any, pol: ControlledEstimator, R: int, seed: int = 0) -> dict[str, Any]:
    """The final-space variance the control removes, measured on identical draws: ``R`` plans of ``pol`` estimated
    with their coefficients and again without (``estimate`` seeds its upstream by the plan), with a paired 90 %
    bootstrap interval of the variance ratio (``scipy.stats.bootstrap``)."""
    from dataclasses import replace

    import numpy as np
    from scipy.stats import bootstrap

    pairs = [(estimate(p), estimate(replace(p, cv_beta=None))) for p in (pol.plan() for _ in range(R))]
    a = torch.stack([x.double().reshape(-1) for x, _ in pairs])
    b = torch.stack([y.double().reshape(-1) for _, y in pairs])

    def ratio(idx: np.ndarray) -> float:
        i = torch.as_tensor(idx.astype(int))
        va, vb = a[i].var(0).sum(), b[i].var(0).sum()
        return float(va / vb) if vb > 0 else math.nan

    res = bootstrap((np.arange(R),), ratio, vectorized=False, n_resamples=2000, confidence_level=0.9,
                    method="percentile", rng=np.random.default_rng(seed))  # fmt: skip
    return {
        "R": R,
        "variance_with_cv": float(a.var(0).sum()),
        "variance_without_cv": float(b.var(0).sum()),
        "variance_ratio": ratio(np.arange(R)),
        "variance_ratio_ci90": [float(res.confidence_interval.low), float(res.confidence_interval.high)],
    }
