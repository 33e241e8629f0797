"""The control-variate extension point (docs/theory.md §14): a surrogate ``g(x, t, eps)`` evaluated on the same
draws as the integrand ``f``, with its conditional mean ``E_eps[g | x, t]`` known in closed form, and a Monte Carlo
check that the declared mean is right."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError, ShapeError
from carv_adapt.plan import Plan
from carv_adapt.proposals.base import bin_index

__all__ = ["ControlVariate", "ControlVariateCheck", "check_control_variate", "with_coefficients"]


class ControlVariate(ABC):
    """A surrogate integrand whose conditional mean over the inner noise is exact.

    Subclasses implement :meth:`surrogate` and :meth:`conditional_mean`; :meth:`evaluate` returns both, ready for
    ``plan.controlled(f, *control)`` and ``controller.observe(plan, f, control=control)``. Shapes follow the
    integrand's: ``x`` is ``N x ...`` outer draws, ``t`` ``N x K`` long timesteps, ``eps`` ``N x K x ...``.
    """

    @abstractmethod
    def surrogate(self, x: Tensor, t: Tensor, eps: Tensor, cond: Any = None) -> Tensor:
        """``N x K x ...`` surrogate values ``g(x_n, t_nk, eps_nk)`` (``cond``: per-outer-draw conditioning)."""

    @abstractmethod
    def conditional_mean(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """``N x K x ...`` exact ``E_eps[g(x_n, t_nk, eps) | x_n, t_nk]`` over the plan's noise law ``N(0, I)``."""

    def evaluate(self, x: Tensor, t: Tensor, eps: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        """``(g, mu_g)`` on the draws, without an autograd graph (the control is a constant of the backward)."""
        with torch.no_grad():
            g = self.surrogate(x.detach(), t, eps, cond)
            mu = self.conditional_mean(x.detach(), t, cond)
        if g.shape != eps.shape or mu.shape != eps.shape:
            raise ShapeError(
                f"{type(self).__name__}: g {tuple(g.shape)} and mu_g {tuple(mu.shape)} must have eps's shape "
                f"{tuple(eps.shape)}"
            )
        return g, mu


@dataclass(frozen=True)
class ControlVariateCheck:
    """A passed :func:`check_control_variate`: the largest per-coordinate ``|z|`` of ``mean(g) - mu_g``, the
    aggregate ``(sum z^2 - n) / sqrt(2 n)`` over the ``n`` coordinates, and the noise samples per draw."""

    max_abs_z: float
    chi2_z: float
    coordinates: int
    samples: int


def check_control_variate(
    cv: ControlVariate,
    x: Tensor,
    t: Tensor,
    cond: Any = None,
    *,
    samples: int = 2048,
    generator: torch.Generator | None = None,
    threshold: float = 6.0,
) -> ControlVariateCheck:
    """Debug check of a declared conditional mean (docs/theory.md §14): estimate ``E_eps[g | x, t] - mu_g`` by Monte
    Carlo over ``samples`` noises per draw and raise :class:`~carv_adapt.errors.ConfigError` when it is not zero.

    A wrong mean would bias every controlled estimate silently. The test fails when the largest per-coordinate
    ``|z|`` exceeds the Bonferroni bound at family-wise level ``1e-6`` or the aggregate chi-square statistic
    exceeds ``threshold`` standard deviations.

    Args:
        cv: the control variate. x: ``N x ...`` outer draws. t: ``N x K`` long timesteps. cond: its conditioning.
        samples: noise draws per ``(n, k)`` (>= 16). generator: the noise stream (default: seeded with 0).
    """
    if samples < 16:
        raise ConfigError(f"samples must be >= 16 to estimate a mean, got {samples!r}")
    g_ = generator if generator is not None else torch.Generator().manual_seed(0)
    shape = (*t.shape, *x.shape[1:])
    dtype = x.dtype if x.is_floating_point() else torch.float32
    # Noise samples ride along the outer axis in chunks: one surrogate call evaluates `chunk` copies of every draw.
    chunk = max(1, min(samples, 2**16 // max(1, math.prod(shape))))
    with torch.no_grad():
        mu = cv.conditional_mean(x.detach(), t, cond).double().cpu()
        s1 = torch.zeros(shape, dtype=torch.float64)
        s2 = torch.zeros(shape, dtype=torch.float64)
        done = 0
        while done < samples:
            c = min(chunk, samples - done)
            xs, ts = torch.cat([x.detach()] * c), torch.cat([t] * c)
            eps = torch.randn((c * shape[0], *shape[1:]), generator=g_, dtype=dtype)
            d = cv.surrogate(xs, ts, eps, _tile(cond, c)).double().cpu().reshape(c, *shape) - mu
            s1 += d.sum(0)
            s2 += d.pow(2).sum(0)
            done += c
    mean = s1 / samples
    var = (s2 / samples - mean * mean).clamp_min(0) * samples / (samples - 1)
    # A deterministic coordinate has zero variance: rounding, not noise, sets its floor.
    floor = math.sqrt(torch.finfo(dtype).eps) * (mu.abs() + 1)
    se = torch.maximum((var / samples).sqrt(), floor / math.sqrt(samples))
    z = (mean / se).reshape(-1)
    n = z.numel()
    max_z, chi2_z = float(z.abs().max()), float(((z * z).sum() - n) / math.sqrt(2 * n))
    bound = float(-torch.special.ndtri(torch.tensor(0.5e-6 / n, dtype=torch.float64)))
    if not (max_z <= bound and chi2_z <= threshold):
        worst = int(z.abs().argmax())
        bias = float(mean.reshape(-1)[worst])
        raise ConfigError(
            f"{type(cv).__name__}: declared conditional mean is wrong (E[g] - mu_g = {bias:.4g} "
            f"at coordinate {worst}, max |z| = {max_z:.1f} > {bound:.1f} or chi2 z = {chi2_z:.1f} > {threshold:g}, "
            f"{samples} samples); fix conditional_mean or every controlled estimate is biased"
        )
    return ControlVariateCheck(max_abs_z=max_z, chi2_z=chi2_z, coordinates=n, samples=samples)


def _tile(cond: Any, c: int) -> Any:
    """Per-outer-draw conditioning repeated ``c`` times along the outer axis."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return torch.cat([cond] * c)
    return list(cond) * c


def with_coefficients(plan: Plan, beta_b: Tensor, edges: Tensor) -> Plan:
    """``plan`` with fixed per-bin coefficients (``B``-dim ``beta_b`` over ``B + 1`` ``edges``) attached as its
    ``N x K`` ``cv_beta``: a control variate for a fixed policy (e.g. a
    :class:`~carv_adapt.estimator.HierarchicalEstimator`'s plans), with ``beta_b`` fitted beforehand (§14)."""
    from dataclasses import replace

    beta_b = torch.as_tensor(beta_b, dtype=torch.float64)
    if beta_b.numel() != torch.as_tensor(edges).numel() - 1:
        raise ShapeError(f"beta_b has {beta_b.numel()} entries, edges define {torch.as_tensor(edges).numel() - 1} bins")
    bins = bin_index(plan.t, torch.as_tensor(edges, dtype=torch.long))
    return replace(plan, cv_beta=beta_b[bins.cpu()].reshape(plan.N, plan.K))
