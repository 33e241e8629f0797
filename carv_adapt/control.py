"""Control-variate math (docs/theory.md §14): pure functions, no state.

A surrogate ``g(xi, t, eps)`` with exactly known conditional mean ``mu_g(xi, t) = E_eps[g | xi, t]`` gives the
centred control ``h = g - mu_g`` (``E[h | xi, t] = 0``). The controlled integrand ``f - beta_b h`` has the mean of
``f`` for any per-bin coefficient ``beta_b`` fixed before the draw; per bin, the trace-optimal scalar is
``beta_b = E<f, h> / E||h||^2`` (estimated from ``<f - mu_g, h>``: same mean, less noise) and removes the share
``rho_b^2 = E<f, h>^2 / (E||f||^2 E||h||^2)`` of the bin's second moment ``m_b``. Sums ``s_ff``, ``s_fh``,
``s_hh`` are per-bin sums of ``||f||^2``, ``<f - mu_g, h>`` and ``||h||^2``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from carv_adapt.errors import ShapeError

__all__ = ["control_moments", "cv_beta", "cv_shrinkage", "cv_correlation", "cv_removed", "controlled_integrand"]


def _same(name: str, x: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != shape:
        raise ShapeError(f"{name}: shape {tuple(x.shape)}, expected the contributions' shape {shape} (N x K x ...)")


def controlled_integrand(f: Tensor, g: Tensor, mu_g: Tensor, beta: Tensor | None) -> tuple[Tensor, Tensor]:
    """``f - beta (g - mu_g)`` per draw, and the ``N x K`` bool mask of draws whose control was finite.

    Args:
        f: ``N x K x ...`` contributions. g: the surrogate on the same draws, same shape. mu_g: its conditional mean
            ``E[g | xi, t]``, same shape.
        beta: ``N x K`` coefficients fixed before the draw (None: all 0, the plain integrand).

    A draw whose ``g`` or ``mu_g`` has a NaN/Inf falls back to ``beta = 0`` (its ``f`` is kept as is), so a broken
    surrogate can cost variance but never bias nor poison the estimate.
    """
    shape = tuple(f.shape)
    _same("g", g, shape)
    _same("mu_g", mu_g, shape)
    h = (g - mu_g).to(f.dtype)
    finite = torch.isfinite(h.reshape(*shape[:2], -1)).all(dim=-1)
    if beta is None:
        return f, finite
    if tuple(beta.shape) != shape[:2]:
        raise ShapeError(f"beta: shape {tuple(beta.shape)}, expected N x K = {shape[:2]}")
    b = torch.where(finite, beta.to(finite.device), torch.zeros((), dtype=beta.dtype, device=finite.device))
    b = b.to(device=f.device, dtype=f.dtype).reshape(*shape[:2], *([1] * (f.dim() - 2)))
    return f - b * torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0), finite


def control_moments(f: Tensor, g: Tensor, mu_g: Tensor) -> tuple[Tensor, ...]:
    """Per-draw ``(||f||^2, ||f - mu_g||^2, <f - mu_g, h>, ||h||^2)`` with ``h = g - mu_g``, each ``N x K``
    float64, of ``N x K x ...`` tensors.

    ``<f - mu_g, h>`` has the mean of ``<f, h>`` (``E[<mu_g, h> | xi, t] = 0``) and a far smaller spread when the
    surrogate tracks ``f``: a surrogate equal to ``f`` gives exactly ``beta = 1`` from a single draw (§14)."""
    n, k = f.shape[:2]
    ff, gg, mm = (v.reshape(n, k, -1).double() for v in (f, g, mu_g))
    r, h = ff - mm, gg - mm
    return ff.pow(2).sum(-1), r.pow(2).sum(-1), (r * h).sum(-1), h.pow(2).sum(-1)


def cv_beta(s_fh: Tensor, s_hh: Tensor) -> Tensor:
    """``B``-dim trace-optimal coefficients ``s_fh / s_hh``; 0 in a bin without evidence (``s_hh = 0``)."""
    return torch.where(s_hh > 0, s_fh / s_hh.clamp_min(1e-300), torch.zeros_like(s_fh))


def cv_shrinkage(beta: Tensor, s_hh: Tensor, s_aa: Tensor, s_ab: Tensor, s_bb: Tensor, n: Tensor, n2: Tensor) -> Tensor:
    """``B``-dim factor ``beta^2 / (beta^2 + se^2)`` that shrinks a noisy coefficient toward 0 (STYLE rule 5: it
    fades as evidence accumulates). Under squared loss a coefficient ``beta_hat`` with error ``se`` removes
    ``E[2 beta_hat c - beta_hat^2 v] `` in expectation, maximized by scaling it by this factor (§14).

    ``se^2 = n_eff / (n_eff - 1) sum w^2 (a - beta b)^2 / s_hh^2`` is the delta-method variance of the ratio
    ``s_fh / s_hh``, from per-draw ``a = <f - mu_g, h>`` and ``b = ||h||^2`` (``s_aa``, ``s_ab``, ``s_bb``: sums of
    ``w^2 a^2``, ``w^2 a b``, ``w^2 b^2``; ``n = sum w``, ``n2 = sum w^2``, ``n_eff = n^2 / n2``). 0 with fewer than
    two effective draws; exactly 1 when every draw has ``a = beta b`` (a surrogate equal to ``f``)."""
    resid = (s_aa - 2.0 * beta * s_ab + beta * beta * s_bb).clamp_min(0)
    n_eff = n * n / n2.clamp_min(1e-300)
    se2 = resid / s_hh.clamp_min(1e-300).pow(2) * n_eff / (n_eff - 1).clamp_min(1e-300)
    factor = beta * beta / (beta * beta + se2).clamp_min(1e-300)
    return torch.where((n_eff > 1 + 1e-9) & (s_hh > 0), factor, torch.zeros_like(beta))


def cv_correlation(s_rr: Tensor, s_fh: Tensor, s_hh: Tensor) -> Tensor:
    """``B``-dim ``rho_b = s_fh / sqrt(s_rr s_hh)``: the correlation of ``f - mu_g`` (``s_rr``: sums of its squared
    norm) with the control; ``rho_b^2`` is the share of ``E||f - mu_g||^2`` the optimal ``beta_b`` removes, 1 for a
    surrogate equal to ``f``. NaN in a bin without evidence."""
    den = (s_rr * s_hh).sqrt()
    return torch.where(den > 0, s_fh / den.clamp_min(1e-300), torch.full_like(s_fh, float("nan")))


def cv_removed(s_fh: Tensor, s_hh: Tensor, beta: Tensor) -> Tensor:
    """``B``-dim summed variance removed by the coefficients ``beta``: ``2 beta s_fh - beta^2 s_hh`` (the means are
    unchanged, so the drop in second moment is a drop in variance; ``s_fh^2 / s_hh`` at the optimum, negative
    for a harmful ``beta``). Divide by the counts for the variance removed per draw."""
    return 2.0 * beta * s_fh - beta * beta * s_hh
