"""Proposal math on binned profiles (docs/theory.md §5, §12 R2-R3): smoothing, evidence-dependent
regularization of the profile, capped moves and the standard error of an IS gain. Pure functions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from carv_adapt.variance import is_second_moment, total_variation

__all__ = ["smooth_bins", "regularized_profile", "capped_move", "is_gain"]


def smooth_bins(m: Tensor, radius: int, weights: Tensor | None = None) -> Tensor:
    """Smooth a per-bin profile with a triangular kernel of ``radius`` bins (edges renormalized).

    With ``weights`` (e.g. per-bin counts) the kernel average is weighted; a bin whose neighbourhood carries no
    weight gets the weighted global mean.
    """
    x = m.double()
    if radius <= 0 or m.numel() <= 1:
        return x.clone()
    w = torch.ones_like(x) if weights is None else weights.double().clamp_min(0)
    k = torch.cat([torch.arange(1, radius + 2), torch.arange(radius, 0, -1)]).double()[None, None]
    pad = torch.nn.functional.pad
    num = torch.nn.functional.conv1d(pad((x * w)[None, None], (radius, radius)), k).reshape(-1)
    den = torch.nn.functional.conv1d(pad(w[None, None], (radius, radius)), k).reshape(-1)
    glob = (x * w).sum() / w.sum() if float(w.sum()) > 0 else x.mean()
    return torch.where(den > 0, num / den.clamp_min(1e-300), glob)


def _neighbour_mean(m: Tensor, w: Tensor, radius: int) -> Tensor:
    """Leave-one-out local mean: triangular kernel over the ``radius`` bins on each side, weighted by ``w`` and
    excluding the bin itself; ``radius = 0`` (or no weighted neighbour) gives the leave-one-out global mean."""
    x, w = m.double(), w.double().clamp_min(0)
    total_w, total = w.sum(), (x * w).sum()
    loo_w = total_w - w
    glob = torch.where(loo_w > 0, (total - x * w) / loo_w.clamp_min(1e-300), x)
    if radius <= 0 or x.numel() <= 1:
        return glob
    k = torch.cat([torch.arange(1, radius + 1), torch.zeros(1), torch.arange(radius, 0, -1)]).double()[None, None]
    pad = torch.nn.functional.pad
    num = torch.nn.functional.conv1d(pad((x * w)[None, None], (radius, radius)), k).reshape(-1)
    den = torch.nn.functional.conv1d(pad(w[None, None], (radius, radius)), k).reshape(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), glob)


def regularized_profile(m: Tensor, se: Tensor, counts: Tensor, radius: int) -> Tensor:
    """Per-bin profile shrunk toward its neighbours by as much as each bin's own noise warrants (§12, R2).

    ``m_hat_b = s_b + (1 - lambda_b) (m_b - s_b)`` with ``lambda_b = v_b / max((m_b - s_b)^2, v_b)``, ``v_b =
    se_b^2`` and ``s_b`` the count-weighted mean of the ``radius`` neighbouring bins on each side, bin ``b``
    excluded (the global mean for ``radius = 0``). A bin whose deviation from its neighbours is within its noise
    is smoothed; a well-measured bin keeps its value; ``lambda_b -> 0`` as ``se_b -> 0``, so the regularizer
    vanishes with evidence. Bins with infinite ``se`` take ``s_b``.

    Args:
        m: ``B``-dim raw per-bin means. se: ``B``-dim standard errors. counts: ``B``-dim (forgetting) counts.
    """
    s = _neighbour_mean(m, counts, radius)
    dev2 = (m.double() - s) ** 2
    v = se.double() ** 2
    lam = torch.where(torch.isfinite(v), v / torch.maximum(dev2, v).clamp_min(1e-300), torch.ones_like(v))
    lam = torch.where((v == 0) & (dev2 == 0), torch.zeros_like(v), lam).clamp(0.0, 1.0)
    return s + (1.0 - lam) * (m.double() - s)


def capped_move(p_cur: Tensor, p_target: Tensor, max_move: float) -> Tensor:
    """Move from ``p_cur`` toward ``p_target`` by at most ``max_move`` in total variation."""
    tv = total_variation(p_cur, p_target)
    if tv <= max_move or tv == 0.0:
        return p_target.double().clone()
    lam = max_move / tv
    return (1.0 - lam) * p_cur.double() + lam * p_target.double()


def is_gain(pi: Tensor, p_cur: Tensor, p_new: Tensor, m: Tensor, se: Tensor) -> tuple[float, float]:
    """``(S(p_cur) - S(p_new), its standard error)`` with ``S(p) = sum_b pi_b^2 / p_b m_b`` (§12, R3).

    The delta method over independent bin means: ``se^2 = sum_b (pi_b^2/p_cur_b - pi_b^2/p_new_b)^2 se_b^2``;
    bins with infinite ``se`` count with the largest finite variance times 4 (an unmeasured bin is not free).
    """
    gain = float(is_second_moment(pi, p_cur, m) - is_second_moment(pi, p_new, m))
    if not math.isfinite(gain):
        return gain, math.inf
    support = pi > 0
    d = torch.zeros_like(pi.double())
    d[support] = pi[support].double() ** 2 * (1.0 / p_cur[support].double() - 1.0 / p_new[support].double())
    v = se.double() ** 2
    finite = torch.isfinite(v)
    fill = 4.0 * float(v[finite].max()) if bool(finite.any()) else math.inf
    v = torch.where(finite, v, torch.full_like(v, fill))
    var = float((d**2 * v).sum()) if math.isfinite(fill) or bool(finite.all()) else math.inf
    return gain, math.sqrt(var) if math.isfinite(var) else math.inf
