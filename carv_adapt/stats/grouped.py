"""Grouped between/within variance estimators (SPEC §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from carv_adapt.errors import ShapeError
from carv_adapt.stats.base import NonFinitePolicy, SumStatistic, all_finite
from carv_adapt.variance import paired_within_from_groups

__all__ = ["GroupedVariance", "BetweenWithin", "split_half_within"]


_CHUNK_ELEMENTS = 1 << 20


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
    """Accumulates grouped sums of squares across steps; ``K`` and the proposal may change between steps.

    Each step's between and ``M2`` terms are corrected with *that step's* within estimate, so
    ``sigma_b2 = sum_s [ssb_s - dof_b_s sw_s / K_s] / sum_s dof_b_s`` and
    ``M2 = sum_n [||xbar_n||^2 - sw_n / K] / groups`` stay unbiased when the within variance changes from
    step to step (a new proposal, a new K); neither quantity depends on the proposal. ``sigma_w2`` is the
    pooled within estimate over the window, i.e. under the mix of proposals that produced it. Steps
    with ``K = 1`` carry no within information and are not accumulated.
    """

    def __init__(self, nonfinite: NonFinitePolicy = "skip") -> None:
        super().__init__(nonfinite)
        for name in ("ssw", "dof_w", "sb_num", "dof_b", "m2_num", "groups", "ss_pair", "pairs"):
            self.add_state(name, torch.zeros(()))

    def _drop_nonfinite(self, what: str, *xs: Tensor) -> tuple[Tensor, ...] | None:
        if all(all_finite(x) for x in xs):
            return xs
        finite = torch.ones(xs[0].shape[0], dtype=torch.bool)
        for x in xs:
            finite &= torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1).cpu()
        if bool(finite.all()):
            return xs
        bad = int((~finite).sum())
        self._finite_or_reject(what, *xs)
        self.num_nonfinite += bad - 1
        kept = tuple(x[finite.to(x.device)] for x in xs)
        return kept if kept[0].shape[0] > 0 else None

    @staticmethod
    def _step_totals(ssw: Tensor, means: Tensor, ss_pair: Tensor) -> list[float]:
        """``[ssw, ss_pair, sum_n ||mean_n||^2, sum_n ||mean_n - mean||^2]`` as floats: every reduction stays
        on the tensors' device and one transfer brings the four totals back."""
        msq = means.pow(2).sum()
        ssb = (means - means.mean(0)).pow_(2).sum() if means.shape[0] >= 2 else torch.zeros_like(msq)
        return torch.stack([ssw.reshape(()), ss_pair.reshape(()).to(msq.dtype), msq, ssb]).double().tolist()

    def _accumulate(self, totals: list[float], n: int, dof_n: int, K: int, pairs: float = 0.0) -> None:
        """Add one step's :meth:`_step_totals` over ``n`` groups of ``dof_n`` within degrees of freedom each to
        the within, paired, between and ``M2`` numerators."""
        ssw_f, pair_f, msq_f, ssb_f = totals
        sw_sum = ssw_f / dof_n  # sum over groups of each group's unbiased within estimate
        between = (ssb_f - (n - 1) * (sw_sum / n) / K, float(n - 1)) if n >= 2 else (0.0, 0.0)
        self._add(
            ("ssw", "dof_w", "ss_pair", "pairs", "m2_num", "groups", "sb_num", "dof_b"),
            (ssw_f, float(n * dof_n), pair_f, pairs, msq_f - sw_sum / K, float(n), *between),
        )

    def update(self, x: Tensor, weights: Tensor | None = None) -> None:
        """Accumulate one step's ``N x K x ...`` weighted contributions ``rho f`` (or ``f`` with ``N x K``
        ``weights`` ``rho``, which avoids materializing the product).

        An outer draw with any non-finite entry is dropped whole (its group would be biased otherwise).
        Temporaries are bounded: outer draws are processed in chunks of about ``2^20`` elements.
        """
        if x.dim() < 2:
            raise ShapeError(f"grouped update needs N x K x ... contributions, got shape {tuple(x.shape)}")
        if weights is not None and tuple(weights.shape) != tuple(x.shape[:2]):
            raise ShapeError(f"weights: shape {tuple(weights.shape)}, expected N x K = {tuple(x.shape[:2])}")
        x = x.detach()
        w = None if weights is None else weights.detach().to(x.device, x.dtype)
        K = x.shape[1]
        if K < 2:
            # No within information; still count (and drop) non-finite draws as the policy says.
            self._drop_nonfinite("contribution", *((x,) if w is None else (x, w)))
            return
        ssw, means, ss_pair, pairs = self._group_sums(x, w)
        totals = self._step_totals(ssw, means, ss_pair)
        # A NaN or an infinity anywhere makes a total non-finite: only then pay the per-draw filter.
        if not all(math.isfinite(v) for v in totals):
            kept = self._drop_nonfinite("contribution", *((x,) if w is None else (x, w)))
            if kept is None:
                return
            x, w = kept[0], (kept[1] if w is not None else None)
            ssw, means, ss_pair, pairs = self._group_sums(x, w)
            totals = self._step_totals(ssw, means, ss_pair)
        self._accumulate(totals, means.shape[0], K - 1, K, pairs)

    @staticmethod
    def _group_sums(x: Tensor, w: Tensor | None) -> tuple[Tensor, Tensor, Tensor, float]:
        """``(within sum of squares, means, paired sum, pairs)`` of ``N x K x ...`` contributions, in
        chunks of outer draws that bound the temporaries (~``_CHUNK_ELEMENTS``); small steps take one pass."""
        n, K = x.shape[0], x.shape[1]
        flat = x.reshape(n, K, -1)
        step = max(1, _CHUNK_ELEMENTS // max(1, K * flat.shape[-1]))
        chunks = []
        ssw = torch.zeros((), dtype=flat.dtype, device=flat.device)
        ss_pair, pairs = torch.zeros_like(ssw), 0.0
        for i in range(0, n, step):
            xi = flat[i : i + step] if w is None else flat[i : i + step] * w[i : i + step, :, None]
            mi = xi.mean(dim=1)
            chunks.append(mi)
            ssw = ssw + (xi - mi[:, None]).pow_(2).sum()
            sp, pc = paired_within_from_groups(xi)
            ss_pair, pairs = ss_pair + sp, pairs + pc
        return ssw, (chunks[0] if len(chunks) == 1 else torch.cat(chunks)), ss_pair, pairs

    def update_split_half(self, g_a: Tensor, g_b: Tensor, K: int) -> None:
        """Accumulate a parameter-space split-half probe (SPEC §7): ``N x P`` gradients of the means of the
        even- and odd-indexed inner draws of each outer draw. Each outer draw gives one within degree of
        freedom, ``||g_A - g_B||^2 / (1/k_A + 1/k_B)``; the group means feed the between sums."""
        if g_a.shape != g_b.shape or g_a.dim() != 2:
            raise ShapeError(f"split-half probe needs two N x P gradients, got {tuple(g_a.shape)}, {tuple(g_b.shape)}")
        if K < 2:
            raise ShapeError(f"split-half probe needs K >= 2 inner draws, got K={K}")
        k_a, k_b = (K + 1) // 2, K // 2

        def totals(a: Tensor, b: Tensor) -> list[float]:
            # Reductions in the gradients' own dtype; the totals come back as float64 in one transfer.
            ssw = (a - b).pow_(2).sum() / (1.0 / k_a + 1.0 / k_b)
            return self._step_totals(ssw, (k_a * a + k_b * b) / K, torch.zeros_like(ssw))

        a, b = g_a.detach(), g_b.detach()
        tot = totals(a, b)
        if not all(math.isfinite(v) for v in tot):  # only then pay the per-draw filter
            kept = self._drop_nonfinite("probe gradient", a, b)
            if kept is None:
                return
            a, b = kept
            tot = totals(a, b)
        self._accumulate(tot, a.shape[0], 1, K)

    def compute(self) -> BetweenWithin:
        """Current estimates (NaN where not identified yet)."""
        sw = float(self.ssw / self.dof_w) if self.dof_w > 0 else math.nan
        sw_pair = float(self.ss_pair / self.pairs) if self.pairs > 0 else math.nan
        sb = float(self.sb_num / self.dof_b) if self.dof_b > 0 else math.nan
        m2 = float(self.m2_num / self.groups) if self.groups > 0 else math.nan
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
