"""Joint closed-form fit of the proposal and ``K`` from statistics (SPEC §4-§5, §8).

One pure function, :func:`fit_policy`, used by the online controller at every refit and by the
offline fitter on logged statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from carv_adapt.allocation import AllocationMode, optimal_allocation
from carv_adapt.variance import (
    is_second_moment,
    optimal_proposal_bins,
    total_variation,
    within_variance_for_proposal,
    work_normalized_variance,
)

__all__ = ["FitInputs", "FitResult", "fit_policy", "smooth_bins", "capped_move"]


def smooth_bins(m: Tensor, radius: int) -> Tensor:
    """Smooth a per-bin profile with a triangular kernel of ``radius`` bins (edges renormalized)."""
    if radius <= 0 or m.numel() <= 1:
        return m.double()
    w = torch.cat([torch.arange(1, radius + 2), torch.arange(radius, 0, -1)]).double()
    x = m.double()[None, None]
    num = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (radius, radius)), w[None, None])
    den = torch.nn.functional.conv1d(torch.nn.functional.pad(torch.ones_like(x), (radius, radius)), w[None, None])
    return (num / den).reshape(-1)


def capped_move(p_cur: Tensor, p_target: Tensor, max_move: float) -> Tensor:
    """Move from ``p_cur`` toward ``p_target`` by at most ``max_move`` in total variation."""
    tv = total_variation(p_cur, p_target)
    if tv <= max_move or tv == 0.0:
        return p_target.double().clone()
    lam = max_move / tv
    return (1.0 - lam) * p_cur.double() + lam * p_target.double()


@dataclass(frozen=True)
class FitInputs:
    """Statistics and settings a refit decides from. Tensors are ``B``-dim over timestep bins."""

    pi_b: Tensor
    m_b: Tensor
    p_cur: Tensor
    K_cur: int
    sigma_b2: float
    sigma_w2: float
    M2: float
    c_0: float
    c_out: float
    c_in: float
    mode: AllocationMode = "fixed_batch"
    N: int | None = 1
    budget: float | None = None
    k_min: int = 1
    k_max: int = 64
    alpha: float = 0.1
    smoothing: int = 1
    max_move: float = 0.25
    k_threshold: float = 0.05
    proposal_threshold: float = 0.01
    allow_k_change: bool = True
    adapt_proposal: bool = True
    adapt_k: bool = True
    prior_b: Tensor | None = None
    m_var: Tensor | None = None  # unshrunk profile for variance predictions (default: m_b)


@dataclass(frozen=True)
class FitResult:
    """The chosen policy and what the variance model predicts for it."""

    p: Tensor
    K: int
    N: int
    sigma_w2: float
    sigma_w2_uniform: float
    W: float
    W_baseline: float
    ecm: float
    is_gain: float
    k_changed: bool
    proposal_changed: bool
    reason: str


def fit_policy(x: FitInputs) -> FitResult:
    """Refit the proposal and ``K`` jointly, damped by thresholds and a move cap (SPEC §4-§5, §8).

    The proposal candidate is ``(1 - alpha) p* + alpha pi`` with ``p* ∝ pi sqrt(smoothed m)``, moved at
    most ``max_move`` (TV) from the current one; the analytic prior (if any) competes too. IS lowers
    ``sigma_w2`` and so ``K*``: each candidate gets its own ``K`` before they are compared by ``W``.
    Switches happen only past ``proposal_threshold`` / ``k_threshold`` relative improvements in ``W``.
    """
    pi_b = x.pi_b.double()
    m_var = x.m_b if x.m_var is None else x.m_var
    # Under a fixed outer batch the per-step fixed cost is spent whatever K is: c_0 / N more per outer draw.
    c_out = x.c_out + (x.c_0 / x.N if x.mode == "fixed_batch" and x.N else 0.0)
    S_cur = float(is_second_moment(pi_b, x.p_cur, m_var))

    def sw_for(p: Tensor) -> float:
        return within_variance_for_proposal(x.sigma_w2, S_cur, float(is_second_moment(pi_b, p, m_var)), x.M2)

    def alloc_for(p: Tensor, allow_k: bool) -> tuple[int, int, float, float]:
        sw = sw_for(p)
        if not allow_k:
            K = x.K_cur
            n = (
                x.N
                if x.mode == "fixed_batch"
                else optimal_allocation(
                    x.sigma_b2, sw, x.c_out, x.c_in, mode=x.mode, budget=x.budget, c_0=x.c_0, k_min=K, k_max=K
                ).N
            )
        else:
            a = optimal_allocation(
                max(x.sigma_b2, 0.0) if not math.isnan(x.sigma_b2) else 0.0,
                sw,
                x.c_out,
                x.c_in,
                mode=x.mode,
                N=x.N,
                budget=x.budget,
                c_0=x.c_0,
                k_min=x.k_min,
                k_max=x.k_max,
            )
            K, n = a.K, a.N
        return K, int(n or 1), sw, _W(x.sigma_b2, sw, K, c_out, x.c_in)

    candidates: list[tuple[str, Tensor]] = [("current", x.p_cur.double())]
    if x.adapt_proposal:
        p_star = optimal_proposal_bins(pi_b, smooth_bins(x.m_b, x.smoothing))
        target = (1.0 - x.alpha) * p_star + x.alpha * pi_b
        candidates.append(("learned", capped_move(x.p_cur, target, x.max_move)))
        if x.prior_b is not None:
            candidates.append(("prior", capped_move(x.p_cur, x.prior_b.double(), x.max_move)))

    allow_k = x.adapt_k and x.allow_k_change
    best_name, best_p = "current", x.p_cur.double()
    best_S = S_cur
    for name, p in candidates[1:]:
        S_p = float(is_second_moment(pi_b, p, m_var))
        if S_p < best_S * (1.0 - x.proposal_threshold):
            best_name, best_p, best_S = name, p, S_p
    proposal_changed = best_name != "current"

    K_new, N_new, sw_new, W_new = alloc_for(best_p, allow_k)
    _, _, _, W_keep = alloc_for(best_p, False)
    reason = f"proposal: {best_name}"
    if K_new != x.K_cur and not (W_new < (1.0 - x.k_threshold) * W_keep):
        K_new, N_new, sw_new, W_new = (*alloc_for(best_p, False)[:3], W_keep)
        reason += f"; K kept at {x.K_cur} (gain below k_threshold={x.k_threshold})"
    elif K_new != x.K_cur:
        reason += f"; K {x.K_cur} -> {K_new}"
    elif x.adapt_k and not x.allow_k_change:
        reason += "; K in cooldown"

    sw_uniform = sw_for(pi_b)
    W_base = _W(x.sigma_b2, sw_uniform, 1, c_out, x.c_in)
    is_gain = sw_uniform / sw_new if sw_new > 0 else 1.0
    ecm = W_base / W_new if W_new > 0 and math.isfinite(W_new) else math.nan
    return FitResult(
        p=best_p,
        K=K_new,
        N=N_new,
        sigma_w2=sw_new,
        sigma_w2_uniform=sw_uniform,
        W=W_new,
        W_baseline=W_base,
        ecm=ecm,
        is_gain=is_gain,
        k_changed=K_new != x.K_cur,
        proposal_changed=proposal_changed,
        reason=reason,
    )


def _W(sigma_b2: float, sigma_w2: float, K: int, c_out: float, c_in: float) -> float:
    if math.isnan(sigma_b2) or math.isnan(sigma_w2):
        return math.nan
    return work_normalized_variance(max(sigma_b2, 0.0), max(sigma_w2, 0.0), K, c_out, c_in)
