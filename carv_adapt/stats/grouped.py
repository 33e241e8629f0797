"""Grouped between/within variance estimators (SPEC §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from carv_adapt.errors import ShapeError
from carv_adapt.stats.base import NonFinitePolicy, SumStatistic
from carv_adapt.variance import paired_within_from_groups, within_between_from_groups

__all__ = ["GroupedVariance", "BetweenWithin", "split_half_within"]


@dataclass(frozen=True)
class BetweenWithin:
    """Estimates from grouped observations: ``sigma_b2``, ``sigma_w2`` (i.i.d.-style, conservative under
    stratification), ``sigma_w2_paired`` (paired strata), ``M2 = E ||mu(xi)||^2``, and the number of groups."""

    sigma_b2: float
    sigma_w2: float
    sigma_w2_paired: float
    M2: float
    groups: float


class GroupedVariance(SumStatistic):
    """Accumulates grouped sums of squares across steps (K may differ between steps).

    ``sigma_w2 = ssw / dof_w`` (pooled); ``sigma_b2 = ssb / dof_b - sigma_w2 * (sum_s dof_b_s / K_s) / dof_b``,
    which is unbiased when ``sigma_w2`` is the same in every step. Steps with a single group contribute
    only to the within sums; steps with ``K = 1`` only to the between ones.
    """

    def __init__(self, nonfinite: NonFinitePolicy = "skip") -> None:
        super().__init__(nonfinite)
        for name in ("ssw", "dof_w", "ssb", "dof_b", "inv_k_dof_b", "ss_mean", "groups", "inv_k_groups",
                     "ss_pair", "pairs"):
            self.add_state(name, torch.zeros(()))

    def update(self, x: Tensor) -> None:
        """Accumulate one step's ``N x K x ...`` weighted contributions ``rho f``.

        An outer draw with any non-finite entry is dropped whole (its group would be biased otherwise).
        """
        if x.dim() < 2:
            raise ShapeError(f"grouped update needs N x K x ... contributions, got shape {tuple(x.shape)}")
        x = x.detach()
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            self._finite_or_reject("contribution", x)
            self.num_nonfinite += bad - 1
            x = x[finite]
            if x.shape[0] == 0:
                return
        K = x.shape[1]
        s = within_between_from_groups(x)
        ss_pair, pairs = paired_within_from_groups(x)
        self.ssw += s["ssw"]
        self.dof_w += s["dof_w"]
        self.ssb += s["ssb"]
        self.dof_b += s["dof_b"]
        self.inv_k_dof_b += s["dof_b"] / K
        self.ss_mean += s["ss_mean"]
        self.groups += s["n"]
        self.inv_k_groups += s["n"] / K
        self.ss_pair += ss_pair
        self.pairs += pairs

    def update_split_half(self, g_a: Tensor, g_b: Tensor, K: int) -> None:
        """Accumulate a parameter-space split-half probe (SPEC §7): ``N x P`` gradients of the means of the
        even- and odd-indexed inner draws of each outer draw. Each outer draw gives one within degree of
        freedom, ``||g_A - g_B||^2 / (1/k_A + 1/k_B)``; the group means feed the between sums."""
        if g_a.shape != g_b.shape or g_a.dim() != 2:
            raise ShapeError(f"split-half probe needs two N x P gradients, got {tuple(g_a.shape)}, {tuple(g_b.shape)}")
        if K < 2:
            raise ShapeError(f"split-half probe needs K >= 2 inner draws, got K={K}")
        a, b = g_a.detach().double(), g_b.detach().double()
        finite = torch.isfinite(a).all(dim=1) & torch.isfinite(b).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            self._finite_or_reject("probe gradient", a, b)
            self.num_nonfinite += bad - 1
            a, b = a[finite], b[finite]
            if a.shape[0] == 0:
                return
        n = a.shape[0]
        k_a, k_b = (K + 1) // 2, K // 2
        means = (k_a * a + k_b * b) / K
        self.ssw += float(((a - b) ** 2).sum()) / (1.0 / k_a + 1.0 / k_b)
        self.dof_w += float(n)
        self.ssb += float(((means - means.mean(0)) ** 2).sum())
        self.dof_b += float(n - 1)
        self.inv_k_dof_b += (n - 1) / K
        self.ss_mean += float((means**2).sum())
        self.groups += float(n)
        self.inv_k_groups += n / K

    def compute(self) -> BetweenWithin:
        """Current estimates (NaN where not identified yet)."""
        sw = float(self.ssw / self.dof_w) if self.dof_w > 0 else math.nan
        sw_pair = float(self.ss_pair / self.pairs) if self.pairs > 0 else math.nan
        if self.dof_b > 0 and not math.isnan(sw):
            sb = float(self.ssb / self.dof_b - sw * self.inv_k_dof_b / self.dof_b)
        else:
            sb = math.nan
        m2 = float(self.ss_mean / self.groups - sw * self.inv_k_groups / self.groups) if self.groups > 0 else math.nan
        return BetweenWithin(sigma_b2=sb, sigma_w2=sw, sigma_w2_paired=sw_pair, M2=m2, groups=float(self.groups))


def split_half_within(g_a: Tensor, g_b: Tensor, K: int) -> float:
    """Parameter-space within variance from the split-half probe (SPEC §7).

    ``g_a`` and ``g_b`` are ``N x P`` gradients of the means of two interleaved halves (even and odd
    inner indices, sizes ``ceil(K/2)`` and ``floor(K/2)``) of each outer draw's ``K`` inner contributions;
    ``E ||g_A - g_B||^2 = sigma_w2 (1/k_A + 1/k_B)`` (``= 4 sigma_w2 / K`` for even K) for i.i.d. draws.
    """
    if g_a.shape != g_b.shape or g_a.dim() != 2:
        raise ShapeError(f"split-half probe needs two N x P gradients, got {tuple(g_a.shape)}, {tuple(g_b.shape)}")
    if K < 2:
        raise ShapeError(f"split-half probe needs K >= 2 inner draws, got K={K}")
    d = (g_a.double() - g_b.double()).pow(2).sum(dim=1).mean()
    k_a, k_b = (K + 1) // 2, K // 2
    return float(d) / (1.0 / k_a + 1.0 / k_b)
