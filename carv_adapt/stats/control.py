"""Per-bin control-variate statistics (docs/theory.md §14): sums of ``||f||^2``, ``<f - mu_g, h>`` and ``||h||^2``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from carv_adapt.control import control_moments, controlled_integrand, cv_beta, cv_correlation, cv_removed
from carv_adapt.errors import NonFiniteError, ShapeError, StateError
from carv_adapt.stats.base import NonFinitePolicy, SumStatistic

__all__ = ["ControlVariateStats", "ControlVariateEstimate"]


@dataclass(frozen=True)
class ControlVariateEstimate:
    """Per-bin (``B``-dim) coefficients ``beta``, correlations ``rho``, the share of ``m_b`` removed at ``beta``
    (``rho^2`` at the optimum), and the forgetting counts of draws with a control."""

    beta: Tensor
    correlation: Tensor
    removed: Tensor
    counts: Tensor


class ControlVariateStats(SumStatistic):
    """Sufficient statistics of ``(f, h = g - mu_g)`` per timestep bin, for the trace-optimal ``beta_b``.

    Only draws with a finite control count; a draw whose surrogate is non-finite is counted in ``num_nonfinite``
    (``nonfinite="error"`` raises instead) and runs with ``beta = 0``. The statistics of one step enter only after
    the step's own draws used the coefficients fixed before it, so the estimate stays unbiased (§14).

    Args:
        edges: ``B + 1`` integer bin edges (the controller's).
        nonfinite: non-finite policy for surrogate values.
    """

    def __init__(self, edges: Tensor, nonfinite: NonFinitePolicy = "skip") -> None:
        super().__init__(nonfinite)
        B = torch.as_tensor(edges).numel() - 1
        for name in ("count", "s_ff", "s_fh", "s_hh"):
            self.add_state(name, torch.zeros(B))

    @property
    def num_bins(self) -> int:
        return int(self.count.numel())

    def beta(self) -> Tensor:
        """``B``-dim coefficients from the statistics so far (0 where a bin has no evidence)."""
        return cv_beta(self.s_fh, self.s_hh)

    def betas(self, bins: Tensor | None, shape: tuple[int, ...]) -> Tensor:
        """``N x K`` float64 coefficients for draws in ``bins`` (``N x K`` bin indices; None: all 0)."""
        if bins is None:
            return torch.zeros(shape, dtype=torch.float64)
        return self.beta()[bins.cpu()].reshape(shape)

    def apply(self, bins: Tensor | None, beta: Tensor | None, f: Tensor | None, g: Tensor, mu_g: Tensor) -> Tensor:
        """The controlled contributions ``f - beta (g - mu_g)`` of one step (``beta``: the plan's ``N x K``
        coefficients), accumulating the step's statistics for later steps. ``f``, ``g``, ``mu_g``: ``N x K x ...``."""
        if f is None or bins is None:
            raise StateError("a control needs the contributions f and a plan with bins: observe(plan, f, control=...)")
        if tuple(bins.shape) != tuple(f.shape[:2]):
            raise ShapeError(f"bins: shape {tuple(bins.shape)}, expected N x K = {tuple(f.shape[:2])}")
        f = f.detach()
        out, finite = controlled_integrand(f, g.detach(), mu_g.detach(), beta)
        bad = int((~finite).sum())
        if bad:
            if self.nonfinite == "error":
                raise NonFiniteError(
                    f"ControlVariateStats: {bad} draw(s) with a non-finite surrogate value; pass nonfinite='skip' "
                    "to run them with beta = 0 and count them"
                )
            self.num_nonfinite += bad
        ff, fh, hh = control_moments(f, g.detach(), mu_g.detach())
        ok = (finite & torch.isfinite(ff) & torch.isfinite(fh) & torch.isfinite(hh)).reshape(-1).cpu()
        b = bins.reshape(-1).cpu()[ok]
        B = self.num_bins
        for name, v in (("s_ff", ff), ("s_fh", fh), ("s_hh", hh)):
            getattr(self, name).add_(torch.bincount(b, weights=v.reshape(-1).cpu()[ok], minlength=B))
        self.count.add_(torch.bincount(b, minlength=B).double())
        return out

    def compute(self) -> ControlVariateEstimate:
        beta = self.beta()
        return ControlVariateEstimate(
            beta=beta,
            correlation=cv_correlation(self.s_ff, self.s_fh, self.s_hh),
            removed=cv_removed(self.s_ff, self.s_fh, self.s_hh, beta),
            counts=self.count.clone(),
        )

    def record(self) -> dict[str, Any]:
        """Plain data for a refit record (empty before any draw with a control)."""
        if float(self.count.sum()) <= 0:
            return {}
        est = self.compute()
        return {
            "cv_beta": est.beta.tolist(),
            "cv_correlation": est.correlation.tolist(),
            "cv_removed": est.removed.tolist(),
            "cv_counts": est.counts.tolist(),
        }
