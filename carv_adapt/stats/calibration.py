"""Per-bin calibration of the output-space profile to the parameter space (docs/theory.md §7.9)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from carv_adapt.errors import ShapeError
from carv_adapt.proposals.base import bin_index
from carv_adapt.stats.base import NonFinitePolicy, SumStatistic

__all__ = ["ProfileCalibration"]


class ProfileCalibration(SumStatistic):
    """Pairs of squared norms of the same draws: ``x = ||f||^2`` in the output space the profile sees and
    ``y = ||J^T f||^2`` in the parameter space (:func:`~carv_adapt.probe.per_draw_probe`), summed per timestep bin.

    :meth:`compute` gives each bin's ratio ``r_b = sum y / sum x`` (the paired ratio estimator: the two norms of a
    draw move together, so the ratio is far less noisy than either mean) and its standard error; the parameter-space
    profile is then ``r_b m_b`` with ``m_b`` the output-space profile, which every step measures.

    Args:
        edges: ``B + 1`` integer bin edges (the profile's).
        nonfinite: a pair with a non-finite member is dropped and counted.
    """

    def __init__(self, edges: Tensor, nonfinite: NonFinitePolicy = "skip") -> None:
        super().__init__(nonfinite)
        self.edges = torch.as_tensor(edges, dtype=torch.long)
        B = self.edges.numel() - 1
        for name in ("count", "sx", "sy", "sxx", "syy", "sxy"):
            self.add_state(name, torch.zeros(B))
        self.add_state("count_sq", torch.zeros(B), decay="square")

    def update(self, t: Tensor, x: Tensor, y: Tensor, bins: Tensor | None = None) -> None:
        """Accumulate the pairs ``(x, y)`` of draws at timesteps ``t`` (all the same shape)."""
        if not (t.shape == x.shape == y.shape):
            raise ShapeError(
                f"calibration update: t {tuple(t.shape)}, x {tuple(x.shape)} and y {tuple(y.shape)} differ"
            )
        xv = x.detach().reshape(-1).to("cpu", torch.float64).numpy()
        yv = y.detach().reshape(-1).to("cpu", torch.float64).numpy()
        b = (bin_index(t.detach().reshape(-1).cpu(), self.edges) if bins is None else bins.reshape(-1).cpu()).numpy()
        ok = np.isfinite(xv) & np.isfinite(yv)
        if not ok.all():
            self._finite_or_reject("squared-norm pair", torch.from_numpy(np.where(ok, xv + yv, np.nan)))
            self.num_nonfinite += int((~ok).sum()) - 1
            xv, yv, b = xv[ok], yv[ok], b[ok]
        B = self.edges.numel() - 1
        for name, v in (
            ("count", np.ones_like(xv)), ("count_sq", np.ones_like(xv)), ("sx", xv), ("sy", yv),
            ("sxx", xv * xv), ("syy", yv * yv), ("sxy", xv * yv),
        ):  # fmt: skip
            getattr(self, name).numpy()[:] += np.bincount(b, v, B)

    def compute(self) -> tuple[Tensor, Tensor]:
        """``(r, se)``, ``B``-dim: each bin's ratio ``sum y / sum x`` and its standard error under forgetting
        (``nan`` / ``inf`` for a bin without a pair; ``se = inf`` until a bin has two)."""
        f = self.folded()
        n, n2 = f.count, f.count_sq
        has = (n > 0) & (f.sx > 0)
        r = torch.where(has, f.sy / f.sx.clamp_min(1e-300), torch.full_like(n, float("nan")))
        rr = torch.where(has, r, torch.zeros_like(r))
        # Delta method: r - r_true ~ sum w (y - r x) / sum w x; the residuals' variance by reliability weights.
        resid = (f.syy - 2 * rr * f.sxy + rr * rr * f.sxx).clamp_min(0)
        safe = n.clamp_min(1e-300)
        den = n - n2 / safe
        var = n2 * resid / den.clamp_min(1e-300) / f.sx.clamp_min(1e-300) ** 2
        se = torch.where(has & (den > 1e-9 * safe), var.sqrt(), torch.full_like(n, float("inf")))
        return r, se

    @property
    def observed(self) -> bool:
        """Whether any pair has been taken."""
        return float(self.folded().count.sum()) > 0
