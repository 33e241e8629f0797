"""Statistics of a workload at frozen parameters from a long pilot, the variance model they imply, and the
brute-force oracle (docs/theory.md §2-§5, §10).

The pilot draws ``N x K`` i.i.d. uniform inner draws and back-propagates every single contribution into the
final space (one vector-Jacobian product per inner draw), so ``sigma_B^2``, ``sigma_W^2``, ``M2`` and the
per-bin second moment ``m_b`` are all measured where the variance is judged, not through a proxy. Stage
costs come from timing whole estimates at several ``K`` and fitting ``seconds = a + b K``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from carv_adapt.allocation import optimal_k
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.plan import Plan
from carv_adapt.proposals import TargetMeasure, UniformProposal
from carv_adapt.proposals.shaping import smooth_bins
from carv_adapt.stats.profile import TimestepProfile
from carv_adapt.variance import (
    fit_linear_cost,
    is_second_moment,
    optimal_proposal_bins,
    within_variance_for_proposal,
)

__all__ = ["EstimateCost", "PilotStats", "OracleChoice", "fit_estimate_cost", "run_pilot", "brute_force_oracle"]


@dataclass(frozen=True)
class EstimateCost:
    """Measured seconds of one estimate with ``N`` outer draws: ``a + b K`` (``a = c_0 + N c_out``,
    ``b = N c_in``)."""

    a: float
    b: float
    N: int

    def seconds(self, K: int) -> float:
        return self.a + self.b * K

    @property
    def c_out(self) -> float:
        """Per outer draw, fixed per-estimate cost included (it cannot be separated at fixed ``N``)."""
        return self.a / self.N

    @property
    def c_in(self) -> float:
        return self.b / self.N


def fit_estimate_cost(
    estimate: Callable[[Plan], Tensor], target: TargetMeasure, N: int, Ks: tuple[int, ...], reps: int, seed: int = 0
) -> EstimateCost:
    """Time ``reps`` estimates at each ``K`` in ``Ks`` (after one untimed warm-up call) and fit ``a + b K``
    by least squares (:func:`~carv_adapt.variance.fit_linear_cost`: ``a, b >= 0``)."""
    pol = {K: HierarchicalEstimator(UniformProposal(target), N=N, K=K, stratification="iid", seed=seed + K) for K in Ks}
    estimate(pol[Ks[0]].plan())
    xs, ys = [], []
    for _ in range(reps):
        for K in Ks:
            t0 = time.perf_counter()
            estimate(pol[K].plan())
            xs.append(float(K))
            ys.append(time.perf_counter() - t0)
    a, b = fit_linear_cost(len(xs), sum(xs), sum(x * x for x in xs), sum(ys), sum(x * y for x, y in zip(xs, ys)))
    return EstimateCost(a=a, b=b, N=N)


@dataclass(frozen=True)
class PilotStats:
    """Final-space statistics at frozen parameters (all ``B``-dim tensors over timestep bins)."""

    edges: Tensor
    pi_b: Tensor
    m_b: Tensor
    counts_b: Tensor
    sigma_b2: float
    sigma_w2: float
    M2: float
    draws: int
    cost: EstimateCost
    prior_b: Tensor | None = field(default=None, repr=False)

    def sigma_w2_for(self, p_b: Tensor) -> float:
        """Within variance for i.i.d. inner draws from bin proposal ``p_b`` (``∝ pi`` inside bins)."""
        S_u = float(is_second_moment(self.pi_b, self.pi_b, self.m_b))
        S_p = float(is_second_moment(self.pi_b, p_b, self.m_b))
        return within_variance_for_proposal(self.sigma_w2, S_u, S_p, self.M2)

    def variance(self, p_b: Tensor, K: int) -> float:
        """``sigma_B^2 / N + sigma_W^2(p) / (N K)`` for the pilot's ``N``."""
        N = self.cost.N
        return max(self.sigma_b2, 0.0) / N + self.sigma_w2_for(p_b) / (N * K)

    def W(self, p_b: Tensor, K: int) -> float:
        """Predicted measured ``W``: variance x predicted seconds per estimate."""
        return self.variance(p_b, K) * self.cost.seconds(K)

    def best_K(self, p_b: Tensor, k_max: int) -> int:
        """The ``K`` minimizing :meth:`W`: ``a / N`` acts as the outer cost, ``b / N`` as the inner one."""
        c = self.cost
        return optimal_k(max(self.sigma_b2, 0.0), self.sigma_w2_for(p_b), c.c_out, c.c_in, 1, k_max)

    def carv_proposal(self, alpha: float = 0.1, smoothing: int = 1) -> Tensor:
        """The closed-form IS proposal ``(1 - alpha) p* + alpha pi`` with ``p* ∝ pi sqrt(smoothed m)``."""
        return (1 - alpha) * optimal_proposal_bins(self.pi_b, smooth_bins(self.m_b, smoothing)) + alpha * self.pi_b


def run_pilot(
    draws: Callable[[Plan, bool], tuple[Tensor | None, Tensor]],
    target: TargetMeasure,
    outer: int,
    inner: int,
    num_bins: int,
    cost: EstimateCost,
    chunk: int = 4,
    seed: int = 0,
    prior_b: Tensor | None = None,
) -> PilotStats:
    """``outer`` outer draws x ``inner`` i.i.d. uniform inner draws, each contribution in the final space.

    ``draws(plan, True)`` returns the ``N x K x P`` per-draw final-space contributions of ``plan``.
    """
    if outer < 2 or inner < 2:
        raise ValueError(f"the pilot needs outer >= 2 and inner >= 2, got {outer}, {inner}")
    edges = target.bin_edges(num_bins)
    profile = TimestepProfile(edges)
    pol = HierarchicalEstimator(UniformProposal(target), N=chunk, K=inner, stratification="iid", seed=seed)
    means, ssw, dof_w, done = [], 0.0, 0, 0
    while done < outer:
        plan = pol.plan()
        g, _ = draws(plan, True)
        assert g is not None
        g = g.double()
        gbar = g.mean(dim=1)
        ssw += float(((g - gbar[:, None]) ** 2).sum())
        dof_w += plan.N * (plan.K - 1)
        means.append(gbar)
        profile.update(plan.t, (g**2).flatten(2).sum(-1))
        done += plan.N
    xbar = torch.cat(means)
    sigma_w2 = ssw / dof_w
    n = xbar.shape[0]
    sigma_b2 = float(((xbar - xbar.mean(0)) ** 2).sum() / (n - 1)) - sigma_w2 / inner
    M2 = float((xbar**2).sum() / n) - sigma_w2 / inner
    m_b = profile.compute()
    m_b = torch.where(torch.isfinite(m_b), m_b, torch.zeros_like(m_b))
    return PilotStats(
        edges=edges,
        pi_b=target.bin_mass(edges),
        m_b=m_b,
        counts_b=profile.count.clone(),
        sigma_b2=sigma_b2,
        sigma_w2=sigma_w2,
        M2=M2,
        draws=n * inner,
        cost=cost,
        prior_b=prior_b,
    )


@dataclass(frozen=True)
class OracleChoice:
    """The brute-force best fixed policy under the pilot's statistics."""

    name: str
    p_b: Tensor
    K: int
    W: float


def brute_force_oracle(
    pilot: PilotStats,
    k_max: int,
    alphas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5),
    smoothings: tuple[int, ...] = (0, 1, 2),
) -> OracleChoice:
    """Minimize the pilot's predicted ``W`` over ``K`` in ``1..k_max`` (exactly, ``W`` is convex in ``K``) and every
    candidate proposal:
    uniform, the analytic prior (if any), and ``(1 - alpha) p* + alpha pi`` over the ``alphas`` and
    ``smoothings`` grids."""
    cands: list[tuple[str, Tensor]] = [("uniform", pilot.pi_b.double())]
    if pilot.prior_b is not None:
        cands.append(("prior", pilot.prior_b.double()))
    for a in alphas:
        for r in smoothings:
            cands.append((f"p*(alpha={a}, smooth={r})", pilot.carv_proposal(a, r)))
    best = OracleChoice("uniform", pilot.pi_b.double(), 1, math.inf)
    for name, p in cands:
        K = pilot.best_K(p, k_max)
        w = pilot.W(p, K)
        if w < best.W:
            best = OracleChoice(name, p, K, w)
    return best
