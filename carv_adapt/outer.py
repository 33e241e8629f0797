"""Outer-draw designs (docs/theory.md §15): uniforms for the outer draws and the between variance of a design.

A design places the ``N`` outer draws of a step through ``N x d`` uniforms ``u`` (a camera sampler maps
``u[:, 0]`` to an azimuth, ``u[:, 1]`` to a polar angle). Every draw's marginal is uniform on ``[0, 1)^d``, so the
estimator's mean is unchanged; only the dependence between the draws of one step differs:

- ``"iid"``: independent uniforms.
- ``"stratified"``: the first coordinate takes one stratum each, ``(s_n + U_n) / N`` with ``s`` a random
  permutation of ``0..N-1`` (the permutation makes each draw's marginal uniform); the other coordinates i.i.d.
- ``"antithetic"``: draws ``2j`` and ``2j + 1`` are a pair ``(u, u')`` with ``u'_0 = u_0 + 1/2 mod 1`` (the
  antipodal angle) and ``u'_i = 1 - u_i`` for ``i >= 1``; with odd ``N`` the last draw is unpaired (i.i.d.).

Pure functions: tensors and floats in, tensors and floats out.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from carv_adapt.errors import ConfigError

__all__ = [
    "OuterDesign",
    "OUTER_DESIGNS",
    "OuterLayout",
    "outer_seed",
    "outer_uniforms",
    "design_between",
    "check_outer_design",
]

OuterDesign = Literal["iid", "stratified", "antithetic"]
OUTER_DESIGNS: tuple[str, ...] = ("iid", "stratified", "antithetic")


def check_outer_design(design: str) -> None:
    """Raise :class:`ConfigError` unless ``design`` is one of :data:`OUTER_DESIGNS`."""
    if design not in OUTER_DESIGNS:
        raise ConfigError(f"outer={design!r} is not an outer design; choose one of {list(OUTER_DESIGNS)}")


def outer_seed(noise_seed: int) -> int:
    """The outer uniforms' seed, derived from a plan's ``noise_seed`` (no draw from the controller's generator, so
    plans under ``outer="iid"`` stay bit-identical to plans without outer uniforms)."""
    return int(np.random.SeedSequence([int(noise_seed), 0x0DE5]).generate_state(1, dtype=np.uint64)[0]) >> 1


def outer_uniforms(N: int, d: int, seed: int, design: str = "iid") -> Tensor:
    """``N x d`` float64 uniforms in ``[0, 1)`` for the outer draws under ``design`` (docs/theory.md §15).

    Deterministic in ``seed``; the first ``d`` columns do not depend on how many are asked for, so callers that
    read ``d = 1`` and ``d = 2`` see the same azimuths.
    """
    check_outer_design(design)
    if N < 1 or d < 1:
        raise ConfigError(f"outer uniforms need N >= 1 and d >= 1, got N={N!r}, d={d!r}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(N, generator=g).double()  # drawn first whatever the design: columns stay aligned
    cols = [torch.rand(N, generator=g, dtype=torch.float64) for _ in range(d)]
    u = torch.stack(cols, dim=1)
    if design == "stratified" and N >= 2:
        u[:, 0] = (perm + u[:, 0]) / N
    elif design == "antithetic" and N >= 2:
        P = N // 2
        u[1 : 2 * P : 2, 0] = torch.remainder(u[0 : 2 * P : 2, 0] + 0.5, 1.0)
        u[1 : 2 * P : 2, 1:] = 1.0 - u[0 : 2 * P : 2, 1:]
    # 1 - u and (s + u) / N can round to 1.0 in float64; keep the half-open interval.
    return u.clamp_(max=1.0 - 2.0**-53)


@dataclass(frozen=True)
class OuterLayout:
    """How one step's outer draws were placed: the design and ``order`` (``N`` long): the draws in stratum order
    (stratified) or in plan order (antithetic pairs ``(0, 1), (2, 3), ...``; i.i.d.)."""

    design: str
    order: Tensor

    @property
    def N(self) -> int:
        return int(self.order.numel())

    @property
    def is_iid(self) -> bool:
        """Whether the draws are independent (``"iid"``, or any design with a single draw)."""
        return self.design == "iid" or self.N < 2


@functools.lru_cache(maxsize=64)
def iid_layout(N: int) -> OuterLayout:
    """The layout of ``N`` i.i.d. outer draws (asked for every step, so made once per ``N``; do not modify it)."""
    return OuterLayout("iid", torch.arange(N))


def layout_of(u: Tensor, design: str) -> OuterLayout:
    """The :class:`OuterLayout` of ``N x d`` outer uniforms drawn under ``design``."""
    check_outer_design(design)
    order = torch.argsort(u[:, 0]) if design == "stratified" else torch.arange(u.shape[0])
    return OuterLayout(design, order)


def design_between(means: Tensor, v: float, ssb: float, layout: OuterLayout) -> tuple[float, float, float] | None:
    """One step's between variances under its outer design from paired group means (docs/theory.md §15.2).

    Args:
        means: ``N x D`` group means ``xbar_n`` (each has variance ``sigma_B^2 + v`` about ``G``).
        v: the variance of one group mean's inner noise, ``sw / K`` (R4).
        ssb: ``sum_n ||xbar_n - xbar||^2``.
        layout: the step's design and draw order.

    Returns:
        ``(b_design, b_iid, dof)``: ``b_design`` estimates ``sigma_B^2(design) = N Var(mean_n mu(xi_n))``,
        ``b_iid`` the i.i.d. ``sigma_B^2`` (both unbiased), ``dof`` the degrees of freedom of ``b_design``; None
        when the step alone does not identify them (stratified ``N < 3``, antithetic ``N < 4``: pair successive
        steps instead, :func:`successive_between`).
    """
    N = means.shape[0]
    x = means.reshape(N, -1)
    if layout.design == "stratified" and N >= 3:
        y = x[layout.order.to(x.device)]
        d = y[:-2] - 2.0 * y[1:-1] + y[2:]
        # E ||d_n||^2 = 6 (mean stratum variance of mu + v) up to the second difference of the stratum means.
        b_design = float(d.pow(2).sum()) / (6.0 * (N - 2)) - v
        return b_design, (ssb - (N - 1) * v + b_design) / N, float(N - 2)
    if layout.design == "antithetic" and N >= 4:
        P = N // 2
        m = 0.5 * (x[0 : 2 * P : 2] + x[1 : 2 * P : 2])
        # Pairs are i.i.d.: Var(m_j) = (sigma_B^2 + Cov) / 2 + v / 2.
        A = 2.0 * float((m - m.mean(0)).pow(2).sum()) / (P - 1) - v
        if N % 2 == 0:
            return A, (ssb - (N - 1) * v + A) / N, float(P - 1)
        b_iid = (N * (ssb - (N - 1) * v) + (N - 1) * A) / (N * N - 1)
        return ((N - 1) * A + b_iid) / N, b_iid, float(P - 1)
    return None


def successive_between(
    mean: Tensor, prev_mean: Tensor, v: float, prev_v: float, N: int, ssb: float
) -> tuple[float, float, float]:
    """``(b_design, b_iid, 1)`` from two successive steps under the same design and ``N`` (docs/theory.md §15.2):
    the step means have variance ``(sigma_B^2(design) + v) / N``, so ``N ||G_t - G_{t-1}||^2 / 2`` less the mean
    ``v`` estimates ``sigma_B^2(design)`` (up to the drift of the mean over one step, as in §13.5)."""
    diff = float((mean.reshape(-1) - prev_mean.reshape(-1)).pow(2).sum())
    b_design = N * diff / 2.0 - (v + prev_v) / 2.0
    return b_design, (ssb - (N - 1) * v + b_design) / N, 1.0


__all__ += ["iid_layout", "layout_of", "successive_between"]


PrevOuter = tuple[Tensor, float, int, str]  # the last unpaired step: mean over its draws, v = sw / K, N, design


def outer_step_between(
    prev: PrevOuter | None, n: int, v: float, ssb: float, means: Tensor | None, outer: OuterLayout
) -> tuple[tuple[float, float, float, float] | None, PrevOuter | None]:
    """``(b_design, b_iid, dof of b_design, weight of b_iid)`` of a step under an outer design, from its own paired
    group means or, when those do not identify it, paired with the ``prev`` step of the same design and ``N``
    (docs/theory.md §15.2); with the unpaired step to keep for the next."""
    if means is None or n != outer.N:  # draws were dropped (non-finite): the pairing is broken
        return None, None
    est = design_between(means, v, ssb, outer)
    if est is not None:
        return (est[0], est[1], est[2], float(n - 1)), None
    cur = means.detach().reshape(n, -1).mean(0)
    keep = (cur.clone(), v, n, outer.design)
    if prev is None or (prev[2], prev[3]) != (n, outer.design) or prev[0].shape != cur.shape:
        return None, keep
    b_design, b_iid, dof = successive_between(cur, prev[0].to(cur.device, cur.dtype), v, prev[1], n, ssb)
    return (b_design, b_iid, dof, 1.0), keep


__all__ += ["outer_step_between"]
