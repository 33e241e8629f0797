"""Optimal inner/outer allocation (docs/theory.md §4): pure functions over integers K and N."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from carv_adapt.errors import ConfigError
from carv_adapt.variance import estimator_variance, work_normalized_variance

__all__ = ["memory_k_max", "k_star_continuous", "optimal_k", "budget_outer_batch", "Allocation", "optimal_allocation"]

AllocationMode = Literal["fixed_batch", "fixed_budget"]


def k_star_continuous(sigma_b2: float, sigma_w2: float, c_out: float, c_in: float) -> float:
    """``K* = sqrt((sigma_w2 / sigma_b2) (c_out / c_in))``; ``inf`` when ``sigma_b2 <= 0`` or ``c_in == 0``."""
    if sigma_w2 <= 0.0 or c_out <= 0.0:
        return 1.0
    if sigma_b2 <= 0.0 or c_in <= 0.0:
        return math.inf
    return math.sqrt((sigma_w2 / sigma_b2) * (c_out / c_in))


def memory_k_max(memory_cap_bytes: int | None, inner_bytes: int | None, N: int, k_max: int) -> int:
    """The largest ``K <= k_max`` whose ``N K`` inner draws fit ``memory_cap_bytes`` (at least 1)."""
    if memory_cap_bytes is None or inner_bytes is None:
        return k_max
    if inner_bytes <= 0 or memory_cap_bytes <= 0:
        raise ConfigError(f"memory cap and bytes per inner draw must be > 0, got {memory_cap_bytes!r}, {inner_bytes!r}")
    return max(1, min(k_max, memory_cap_bytes // (max(N, 1) * inner_bytes)))


def _check_bounds(k_min: int, k_max: int) -> None:
    if k_min < 1:
        raise ConfigError(f"k_min must be >= 1, got {k_min!r}")
    if k_max < k_min:
        raise ConfigError(f"k_max must be >= k_min ({k_min}), got {k_max!r}")


def _sigma_w2_at(sigma_w2: float | Sequence[float], K: int) -> float:
    if isinstance(sigma_w2, (int, float)):
        return float(sigma_w2)
    return float(sigma_w2[K - 1])


def budget_outer_batch(budget: float, K: int, c_out: float, c_in: float, c_0: float = 0.0) -> int:
    """``N = floor((B - c_0) / (c_out + K c_in))``, at least 1 (docs/theory.md §4, fixed budget)."""
    per_draw = c_out + K * c_in
    if per_draw <= 0:
        raise ConfigError(f"c_out + K c_in must be > 0 for a budget allocation, got {per_draw!r}")
    return max(1, int(math.floor((budget - c_0) / per_draw + 1e-12)))


def optimal_k(
    sigma_b2: float,
    sigma_w2: float | Sequence[float],
    c_out: float,
    c_in: float,
    k_min: int = 1,
    k_max: int = 64,
) -> int:
    """Integer ``K`` in ``[k_min, k_max]`` minimizing ``W`` (docs/theory.md §4, fixed outer batch).

    With a constant ``sigma_w2`` ``W`` is convex in ``K``, so comparing ``floor`` and ``ceil`` of the
    clamped continuous ``K*`` gives the integer argmin. ``sigma_w2`` may instead be a sequence indexed by
    ``K - 1`` (per-K within variance under stratification); then ``W`` is minimized over integers directly.
    When ``sigma_b2 <= 0`` (all variance is within) the answer is ``k_max``.
    """
    _check_bounds(k_min, k_max)
    if not isinstance(sigma_w2, (int, float)):
        if len(sigma_w2) < k_max:
            raise ConfigError(f"per-K sigma_w2 needs {k_max} entries (K = 1..k_max), got {len(sigma_w2)}")
        return min(
            range(k_min, k_max + 1),
            key=lambda K: work_normalized_variance(sigma_b2, _sigma_w2_at(sigma_w2, K), K, c_out, c_in),
        )
    if sigma_b2 <= 0.0 and sigma_w2 > 0.0:
        return k_max
    k_cont = k_star_continuous(sigma_b2, float(sigma_w2), c_out, c_in)
    k_cont = min(max(k_cont, float(k_min)), float(k_max))
    lo, hi = int(math.floor(k_cont)), int(math.ceil(k_cont))
    candidates = {min(max(lo, k_min), k_max), min(max(hi, k_min), k_max)}
    return min(sorted(candidates), key=lambda K: work_normalized_variance(sigma_b2, float(sigma_w2), K, c_out, c_in))


class Allocation:
    """The chosen ``(N, K)`` and the model's predictions for it (a plain value)."""

    __slots__ = ("N", "K", "variance", "cost", "W")

    def __init__(self, N: int, K: int, variance: float, cost: float, W: float) -> None:
        self.N, self.K, self.variance, self.cost, self.W = N, K, variance, cost, W

    def __repr__(self) -> str:
        return f"Allocation(N={self.N}, K={self.K}, variance={self.variance:.4g}, cost={self.cost:.4g})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Allocation) and (self.N, self.K) == (other.N, other.K)


def optimal_allocation(
    sigma_b2: float,
    sigma_w2: float | Sequence[float],
    c_out: float,
    c_in: float,
    *,
    mode: AllocationMode = "fixed_batch",
    N: int | None = None,
    budget: float | None = None,
    c_0: float = 0.0,
    k_min: int = 1,
    k_max: int = 64,
) -> Allocation:
    """Choose ``(N, K)`` under either allocation mode (docs/theory.md §4).

    ``fixed_batch``: the user's ``N`` stays and ``K`` minimizes ``W``; the fixed cost ``c_0`` is paid once per
    step of ``N`` outer draws whatever ``K`` is, so it counts as ``c_0 / N`` more outer cost (``W`` then is
    the variance times the whole per-step cost, per outer draw). ``fixed_budget``: ``K`` (and
    ``N = floor((budget - c_0)/(c_out + K c_in))``) minimize the estimator variance at that budget; the
    floor makes the objective non-convex, so integers are searched directly.
    """
    _check_bounds(k_min, k_max)
    if mode == "fixed_batch":
        if N is None or N < 1:
            raise ConfigError(f"fixed_batch allocation needs N >= 1, got N={N!r}")
        c_out_step = c_out + c_0 / N
        K = optimal_k(sigma_b2, sigma_w2, c_out_step, c_in, k_min, k_max)
        sw = _sigma_w2_at(sigma_w2, K)
        return Allocation(
            N,
            K,
            estimator_variance(sigma_b2, sw, N, K),
            c_0 + N * (c_out + K * c_in),
            work_normalized_variance(sigma_b2, sw, K, c_out_step, c_in),
        )
    if mode != "fixed_budget":
        raise ConfigError(f"allocation mode must be 'fixed_batch' or 'fixed_budget', got {mode!r}")
    if budget is None or budget <= c_0:
        raise ConfigError(f"fixed_budget allocation needs budget > c_0 ({c_0:.4g}), got budget={budget!r}")
    best: Allocation | None = None
    for K in range(k_min, k_max + 1):
        sw = _sigma_w2_at(sigma_w2, K)
        n = budget_outer_batch(budget, K, c_out, c_in, c_0)
        var = estimator_variance(sigma_b2, sw, n, K)
        cand = Allocation(
            n, K, var, c_0 + n * (c_out + K * c_in), work_normalized_variance(sigma_b2, sw, K, c_out, c_in)
        )
        if best is None or var < best.variance - 1e-15 * abs(var):
            best = cand
    assert best is not None
    return best
