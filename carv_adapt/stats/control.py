"""Per-bin control-variate statistics (docs/theory.md §14): sums of ``||f||^2``, ``||f - mu_g||^2``,
``<f - mu_g, h>`` and ``||h||^2``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from carv_adapt.control import control_moments, controlled_integrand, cv_beta, cv_correlation, cv_removed, cv_shrinkage
from carv_adapt.errors import ShapeError, StateError
from carv_adapt.stats.base import NonFinitePolicy, SumStatistic

__all__ = ["ControlVariateStats", "ControlVariateEstimate"]


@dataclass(frozen=True)
class ControlVariateEstimate:
    """Per-bin (``B``-dim): coefficients ``beta``; correlations ``rho`` of ``f - mu_g`` with the control;
    ``removed``, the variance removed per draw at ``beta`` (rho-free); ``m``, the uncontrolled second moment
    ``E||f||^2`` per draw (so ``removed / m`` is the share of the profile removed); forgetting ``counts``."""

    beta: Tensor
    correlation: Tensor
    removed: Tensor
    m: Tensor
    counts: Tensor


class ControlVariateStats(SumStatistic):
    """Sufficient statistics of ``(f, h = g - mu_g)`` per timestep bin, for the trace-optimal ``beta_b``.

    Only draws with a finite control count; a draw whose surrogate is non-finite is counted in ``num_nonfinite``
    (``nonfinite="error"`` raises instead) and runs with ``beta = 0``. The statistics of one step enter only after
    the step's own draws used the coefficients fixed before it, so the estimate stays unbiased (§14). Under
    ``torch.distributed`` each rank fits its coefficients from its own draws (any coefficient fixed before the draw
    keeps the estimate unbiased), so these sums are not all-reduced.

    Args:
        edges: ``B + 1`` integer bin edges (the controller's).
        nonfinite: non-finite policy for surrogate values.
    """

    def __init__(self, edges: Tensor, nonfinite: NonFinitePolicy = "skip") -> None:
        super().__init__(nonfinite)
        B = torch.as_tensor(edges).numel() - 1
        for name in ("count", "s_ff", "s_rr", "s_fh", "s_hh"):
            self.add_state(name, torch.zeros(B))
        for name in ("count_sq", "s_aa", "s_ab", "s_bb"):  # squared forgetting weights: the coefficient's error
            self.add_state(name, torch.zeros(B), decay="square")

    @property
    def num_bins(self) -> int:
        return int(self.count.numel())

    def beta(self) -> Tensor:
        """``B``-dim coefficients from the statistics so far: the trace-optimal ratio shrunk toward 0 by its own
        standard error (0 where a bin has fewer than two draws; the shrinkage fades with evidence)."""
        raw = cv_beta(self.s_fh, self.s_hh)
        return raw * cv_shrinkage(raw, self.s_hh, self.s_aa, self.s_ab, self.s_bb, self.count, self.count_sq)

    def betas(self, bins: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
        """``N x K`` float64 coefficients for draws in ``bins`` (``N x K`` bin indices); None (every coefficient 0)
        without bins or before any controlled draw, so a run without a control pays nothing per step."""
        if bins is None or not self.count.numpy().any():  # NumPy: asked every step, a torch call costs its dispatch
            return None
        return self.beta()[bins.cpu()].reshape(shape)

    def apply(self, bins: Tensor | None, beta: Tensor | None, f: Tensor | None, g: Tensor, mu_g: Tensor) -> Tensor:
        """The controlled contributions ``f - beta (g - mu_g)`` of one step (``beta``: the plan's ``N x K``
        coefficients), accumulating the step's statistics for later steps. ``f``, ``g``, ``mu_g``: ``N x K x ...``."""
        if f is None or bins is None:
            raise StateError("a control needs the contributions f and a plan with bins: observe(plan, f, control=...)")
        if tuple(bins.shape) != tuple(f.shape[:2]):
            raise ShapeError(f"bins: shape {tuple(bins.shape)}, expected N x K = {tuple(f.shape[:2])}")
        f, g, mu_g = f.detach(), g.detach(), mu_g.detach()
        out, finite = controlled_integrand(f, g, mu_g, beta)
        bad = int((~finite).sum())
        if bad:
            self._finite_or_reject("surrogate value (that draw runs with beta = 0)", g - mu_g)  # raises or warns once
            self.num_nonfinite += bad - 1
        moments = control_moments(f, g, mu_g)
        ok = finite.clone()
        for v in moments:
            ok &= torch.isfinite(v)
        ok = ok.reshape(-1).cpu()
        b = bins.reshape(-1).cpu()[ok]
        B = self.num_bins
        ff, rr, a, hh = (v.reshape(-1).cpu()[ok] for v in moments)
        for name, v in (("s_ff", ff), ("s_rr", rr), ("s_fh", a), ("s_hh", hh), ("s_aa", a * a), ("s_ab", a * hh),
                        ("s_bb", hh * hh)):  # fmt: skip
            getattr(self, name).add_(torch.bincount(b, weights=v, minlength=B))
        n_b = torch.bincount(b, minlength=B).double()
        self.count.add_(n_b)
        self.count_sq.add_(n_b)
        return out

    def compute(self) -> ControlVariateEstimate:
        beta, n = self.beta(), self.count.clamp_min(1e-300)
        nan = torch.full_like(self.count, float("nan"))
        return ControlVariateEstimate(
            beta=beta,
            correlation=cv_correlation(self.s_rr, self.s_fh, self.s_hh),
            removed=torch.where(self.count > 0, cv_removed(self.s_fh, self.s_hh, beta) / n, nan),
            m=torch.where(self.count > 0, self.s_ff / n, nan),
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
            "cv_m": est.m.tolist(),
            "cv_counts": est.counts.tolist(),
        }
