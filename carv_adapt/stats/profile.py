"""Per-bin second-moment profile ``m(t) = E ||f||^2`` (docs/theory.md §7), with counts and forgetting."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from carv_adapt.errors import ShapeError
from carv_adapt.proposals.base import bin_index
from carv_adapt.stats.base import NonFinitePolicy, SumStatistic

__all__ = ["TimestepProfile"]


class TimestepProfile(SumStatistic):
    """Tracks per-bin sums of ``||f||^2`` (rho-free) over the timesteps that fell in each bin.

    Samples drawn from any proposal that is ``∝ pi`` inside bins give the bin's conditional mean
    directly, so the plain per-bin average is the right estimate of ``m_b``.

    Args:
        edges: ``B + 1`` integer bin edges.
        nonfinite: non-finite policy; a non-finite entry drops that single observation.
    """

    def __init__(self, edges: Tensor, nonfinite: NonFinitePolicy = "skip") -> None:
        super().__init__(nonfinite)
        self.edges = torch.as_tensor(edges, dtype=torch.long)
        B = self.edges.numel() - 1
        self.add_state("count", torch.zeros(B))
        self.add_state("sum_sq", torch.zeros(B))
        self.add_state("sum_sq2", torch.zeros(B))
        self.add_state("count_sq", torch.zeros(B), decay="square")  # sum of squared forgetting weights

    @property
    def num_bins(self) -> int:
        return self.edges.numel() - 1

    def update(self, t: Tensor, sq_norms: Tensor, bins: Tensor | None = None, defer: bool = False) -> bool:
        """Accumulate ``sq_norms`` (same shape as the long Tensor ``t``); ``bins``, if given, are the bin
        indices of ``t`` for these edges (a plan carries them), which saves the search. With ``defer`` a finite
        step is held and binned later with the next ones (reads see it: :meth:`folded`). Returns whether every
        squared norm was finite."""
        if t.shape != sq_norms.shape:
            raise ShapeError(f"profile update: t {tuple(t.shape)} and sq_norms {tuple(sq_norms.shape)} differ")
        # A step's few numbers go to Python lists and are binned in NumPy later, many steps at once: a library call on
        # a tensor this small costs its dispatch, and after the workload's compute each starts cold (tens of us).
        vals = sq_norms.detach().reshape(-1).tolist()
        b = (bin_index(t.detach().reshape(-1).cpu(), self.edges) if bins is None else bins.reshape(-1)).tolist()
        finite = all(map(math.isfinite, vals))
        if finite and defer:
            self._defer((b, vals))
            return True
        v, bb = np.asarray(vals, dtype=np.float64), np.asarray(b, dtype=np.int64)
        if not finite:
            ok = np.isfinite(v)
            self._finite_or_reject("squared norm", torch.from_numpy(v))  # applies the policy (raises or warns once)
            self.num_nonfinite += int((~ok).sum()) - 1
            v, bb = v[ok], bb[ok]
        self._bin(bb, v, np.ones_like(v), np.ones_like(v))
        return finite

    def _bin(self, b: np.ndarray, v: np.ndarray, w: np.ndarray, w_sq: np.ndarray) -> None:
        """Add observations ``v`` in bins ``b`` with forgetting weights ``w`` (``w_sq`` for the squared-weight sum)."""
        B = self.num_bins
        count, count_sq, sum_sq, sum_sq2 = (
            getattr(self, n).numpy() for n in ("count", "count_sq", "sum_sq", "sum_sq2")
        )
        count += np.bincount(b, w, B)
        count_sq += np.bincount(b, w_sq, B)
        sum_sq += np.bincount(b, v * w, B)
        sum_sq2 += np.bincount(b, v * v * w, B)

    def _reduce_deferred(self, pending: list[tuple[list[int], list[float]]], missed: np.ndarray) -> None:
        sizes = [len(b) for b, _ in pending]
        w = np.repeat(missed, sizes)
        b = np.fromiter(itertools.chain.from_iterable(b for b, _ in pending), np.int64, sum(sizes))
        v = np.fromiter(itertools.chain.from_iterable(v for _, v in pending), np.float64, sum(sizes))
        self._bin(b, v, w, w * w)

    def compute(self) -> Tensor:
        """``B``-dim per-bin mean of ``||f||^2``; a bin with no observation gets the count-weighted global mean
        (never zero: a zero would starve it of proposal mass and make its weight explode later)."""
        f = self.folded()
        total = f.count.sum()
        glob = f.sum_sq.sum() / total if total > 0 else torch.tensor(0.0, dtype=torch.float64)
        return torch.where(f.count > 0, f.sum_sq / f.count.clamp_min(1e-300), glob)

    def standard_error(self) -> Tensor:
        """``B``-dim standard error of each bin's mean under forgetting (``inf`` until a bin has two
        observations): reliability-weighted variance times ``sum w^2 / (sum w)^2`` (docs/theory.md §12, R2)."""
        f = self.folded()
        n, n2 = f.count, f.count_sq
        safe = n.clamp_min(1e-300)
        mean = f.sum_sq / safe
        den = (n - n2 / safe).clamp_min(0)
        var = (f.sum_sq2 - f.sum_sq * mean).clamp_min(0) / den.clamp_min(1e-300)
        se = (var * n2).sqrt() / safe
        return torch.where(den > 1e-9 * safe, se, torch.full_like(n, float("inf")))

    def state_dict(self) -> dict:
        out = super().state_dict()
        # Deferred steps are saved as such: taking a checkpoint must not change when they are binned.
        missed = self._missed[: len(self._pending)].tolist()
        out["pending"] = [{"bins": list(b), "v": list(v), "missed": m} for (b, v), m in zip(self._pending, missed)]
        return out

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        pending = state.pop("pending", [])
        super().load_state_dict(state)
        self._pending = [([int(x) for x in p["bins"]], [float(x) for x in p["v"]]) for p in pending]
        self._missed[: len(pending)] = [float(p["missed"]) for p in pending]
