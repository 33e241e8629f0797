"""Analytic teachers with exact epsilon prediction (docs/theory.md §10): Gaussian and Gaussian-mixture data on a
VP schedule, the SDS-type integrand (theory.md §1), and its exact expectation and statistics (theory.md §2, §5) for
the single Gaussian.

Derivation. For data ``x0 ~ N(mean, std^2 I)`` the noised marginal is ``N(alpha mean, v_t I)`` with
``v_t = alpha_t^2 std^2 + sigma_t^2``, so ``eps_hat(z, t) = E[eps | z] = sigma_t (z - alpha_t mean) / v_t``.
With ``z = alpha x + sigma eps`` and ``u = x - mean`` the SDS integrand is affine in ``(u, eps)``::

    f = w(t) (eps_hat(z, t) - eps) = w_t (c_t u - (1 - d_t) eps),
    c_t = alpha_t sigma_t / v_t,   d_t = sigma_t^2 / v_t,   1 - d_t = alpha_t^2 std^2 / v_t.

Let the outer draws have mean ``x_mean`` and ``tr Cov(x) = x_cov_trace`` (any distribution: only these two
moments enter), ``E||u||^2 = ||x_mean - mean||^2 + x_cov_trace``, ``D = mean.numel()``. Since ``eps`` is
centred and independent of ``x``:

- ``mu(x) = E_{t~pi, eps} f = kappa u`` with ``kappa = sum_t pi w c``; ``G = kappa (x_mean - mean)``.
- ``m(t) = E_{x, eps} ||f||^2 = w_t^2 (c_t^2 E||u||^2 + (1 - d_t)^2 D)``.
- ``sigma_B^2 = tr Cov_x(mu(x)) = kappa^2 x_cov_trace``.
- ``sigma_W^2(p) = E_x [E_{t~p, eps} ||rho f||^2 - ||mu(x)||^2] = sum_t pi^2 / p m(t) - kappa^2 E||u||^2``
  ``= (sum_t pi^2/p w^2 c^2 - kappa^2) E||u||^2 + D sum_t pi^2/p w^2 (1 - d)^2`` (i.i.d. inner draws; the
  first term is ``Var_{t~p}(rho w c) E||u||^2 >= 0``: timestep noise; the second is the noise term).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError, ShapeError
from carv_adapt.teachers.base import Teacher
from carv_adapt.teachers.schedules import ddpm_alphas_cumprod

__all__ = [
    "GaussianTeacher",
    "GaussianMixtureTeacher",
    "sds_integrand",
    "sds_weight",
    "exact_sds_expectation",
    "exact_second_moment_profile",
    "exact_within_between",
    "WithinBetween",
    "exact_sds_statistics",
    "SDSStatistics",
]


def _schedule(alphas_cumprod: Tensor | None) -> Tensor:
    abar = ddpm_alphas_cumprod() if alphas_cumprod is None else torch.as_tensor(alphas_cumprod).double()
    if abar.dim() != 1 or abar.numel() == 0 or not bool(((abar > 0) & (abar <= 1)).all()):
        raise ConfigError(f"alphas_cumprod must be a non-empty 1-D tensor in (0, 1], got shape {tuple(abar.shape)}")
    return abar


def _check_batch(name: str, x_t: Tensor, t: Tensor, per_sample: str, ok: bool) -> None:
    if not ok or t.dim() != 1 or t.shape[0] != x_t.shape[0]:
        raise ShapeError(
            f"{name}.predict_eps: x_t {tuple(x_t.shape)} and t {tuple(t.shape)}; expected x_t B x ... with "
            f"{per_sample} per sample and t B-dim"
        )


class GaussianTeacher(Teacher):
    """Exact teacher for ``x0 ~ N(mean, std^2 I)`` (docs/theory.md §10).

    Args:
        mean: the data mean, with the per-sample shape (``D`` or e.g. ``C x H x W``).
        std: data standard deviation (> 0), shared by all coordinates.
        alphas_cumprod: ``T``-dim VP schedule; default :func:`ddpm_alphas_cumprod`.
    """

    def __init__(self, mean: Tensor, std: float = 1.0, alphas_cumprod: Tensor | None = None) -> None:
        if not 0 < float(std) < float("inf"):
            raise ConfigError(f"std must be a finite float > 0, got {std!r}")
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        if self.mean.dim() == 0 or not bool(self.mean.isfinite().all()):
            raise ConfigError(f"mean must be a finite tensor with the per-sample shape, got {mean!r}")
        self.std = float(std)
        self.alphas_cumprod = _schedule(alphas_cumprod)

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """``(c_t, d_t)``, each ``T``-dim: ``f / w = c_t (x - mean) + (d_t - 1) eps`` (module docstring)."""
        a2 = self.alphas_cumprod
        v = a2 * self.std**2 + (1 - a2)
        return a2.sqrt() * (1 - a2).sqrt() / v, (1 - a2) / v

    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """``eps_hat = sigma_t (x_t - alpha_t mean) / (alpha_t^2 std^2 + sigma_t^2)``, ``x_t`` ``B x ...``."""
        shape = tuple(self.mean.shape)
        _check_batch("GaussianTeacher", x_t, t, f"shape {shape}", tuple(x_t.shape[1:]) == shape)
        a, s = self.alpha_sigma(t, torch.float64, x_t.device)  # float64: exact answers are the point
        view = (-1,) + (1,) * self.mean.dim()
        a, s = a.view(view), s.view(view)
        eps = s * (x_t.double() - a * self.mean.to(x_t.device)) / (a**2 * self.std**2 + s**2)
        return eps.to(x_t.dtype)


class GaussianMixtureTeacher(Teacher):
    """Exact teacher for an isotropic mixture ``sum_j weights_j N(means_j, stds_j^2 I)`` in ``R^D``.

    The noised mixture is ``sum_j weights_j N(alpha means_j, (alpha^2 stds_j^2 + sigma^2) I)``;
    ``eps_hat = E[eps | z] = -sigma_t score(z)``, the score being the responsibility-weighted component
    scores (responsibilities by softmax of log-densities, i.e. log-sum-exp: stable far from every mode).

    Args:
        weights: ``M``-dim positive (normalized here). means: ``M x D``. stds: ``M``-dim positive.
        alphas_cumprod: ``T``-dim VP schedule; default :func:`ddpm_alphas_cumprod`.
    Inputs ``x_t`` are ``B x ...`` with ``D`` entries per sample.
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor, alphas_cumprod: Tensor | None = None) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        M = weights.numel()
        if weights.dim() != 1 or self.means.dim() != 2 or self.means.shape[0] != M or self.stds.shape != (M,):
            raise ConfigError(
                f"need weights [M], means [M, D], stds [M]; got {tuple(weights.shape)}, "
                f"{tuple(self.means.shape)}, {tuple(self.stds.shape)}"
            )
        if not bool((weights > 0).all() & weights.isfinite().all() & (self.stds > 0).all()):
            raise ConfigError(f"mixture weights and stds must be finite and > 0, got {weights} and {self.stds}")
        self.weights = weights / weights.sum()
        self.alphas_cumprod = _schedule(alphas_cumprod)

    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        D = self.means.shape[1]
        _check_batch("GaussianMixtureTeacher", x_t, t, f"{D} entries", math.prod(x_t.shape[1:]) == D)
        a, s = self.alpha_sigma(t, torch.float64, x_t.device)
        a, s = a[:, None], s[:, None]  # B x 1
        means, stds = self.means.to(x_t.device), self.stds.to(x_t.device)
        z = x_t.double().reshape(x_t.shape[0], D)
        var = a**2 * stds**2 + s**2  # B x M
        diff = z[:, None, :] - a[:, :, None] * means  # B x M x D
        logp = self.weights.to(x_t.device).log() - 0.5 * (diff**2).sum(-1) / var - 0.5 * D * var.log()
        resp = torch.softmax(logp, dim=1)  # B x M posterior responsibilities of the components
        score = -(resp[..., None] * diff / var[..., None]).sum(1)  # B x D
        return (-s * score).reshape(x_t.shape).to(x_t.dtype)


def sds_weight(alphas_cumprod: Tensor, kind: Literal["ones", "sigma2"] = "sigma2") -> Tensor:
    """``T``-dim SDS weight ``w(t)``: ``"ones"``, or ``"sigma2"`` = ``1 - alphabar_t`` (DreamFusion's)."""
    if kind == "ones":
        return torch.ones_like(alphas_cumprod, dtype=torch.float64)
    if kind == "sigma2":
        return (1 - alphas_cumprod).double()
    raise ConfigError(f"sds weight kind must be 'ones' or 'sigma2', got {kind!r}")


def sds_integrand(
    teacher: Teacher,
    x: Tensor,
    t: Tensor,
    eps: Tensor,
    weight: Tensor | None = None,
    cond: Any = None,
    chunk_size: int | None = None,
) -> Tensor:
    """The SDS-type contribution ``f = w(t) (eps_hat(alpha_t x + sigma_t eps, t) - eps)`` (docs/theory.md §1).

    Args:
        teacher: any :class:`Teacher`.
        x: ``N x ...`` outer draws (renders or latents). t: ``N x K`` long. eps: ``N x K x ...``.
        weight: ``T``-dim ``w(t)`` (default ones).
        cond, chunk_size: passed to :meth:`Teacher.eps_draws`.

    Returns:
        ``N x K x ...`` contributions, without an autograd graph (SDS never differentiates the teacher).
    """
    eps_hat = teacher.eps_draws(x, t, eps, cond=cond, chunk_size=chunk_size)
    f = eps_hat - eps
    if weight is not None:
        if weight.shape != (teacher.num_timesteps,):
            raise ShapeError(
                f"weight must be {teacher.num_timesteps}-dim (one per timestep), got {tuple(weight.shape)}"
            )
        w = weight.to(device=f.device, dtype=f.dtype)[t.to(f.device)]
        f = w.reshape(*t.shape, *([1] * (f.dim() - 2))) * f
    return f


# --- exact statistics of the SDS integrand for the single Gaussian (module docstring) -----------------


def _pmf(name: str, pmf: Tensor, T: int) -> Tensor:
    pmf = torch.as_tensor(pmf).double().cpu()
    if pmf.shape != (T,) or bool((pmf < 0).any()) or abs(float(pmf.sum()) - 1) > 1e-6:
        raise ConfigError(f"{name} must be a {T}-dim pmf (non-negative, sums to 1), got shape {tuple(pmf.shape)}")
    return pmf


def _weight(teacher: GaussianTeacher, weight: Tensor | None) -> Tensor:
    T = teacher.num_timesteps
    if weight is None:
        return torch.ones(T, dtype=torch.float64)
    if weight.shape != (T,):
        raise ShapeError(f"weight must be {T}-dim (one per timestep), got {tuple(weight.shape)}")
    return weight.double().cpu()


def _u2(teacher: GaussianTeacher, x_mean: Tensor, x_cov_trace: float) -> float:
    """``E||x - mean||^2 = ||x_mean - mean||^2 + tr Cov(x)``."""
    x_mean = torch.as_tensor(x_mean).double().cpu()
    if x_mean.shape != teacher.mean.shape:
        raise ShapeError(
            f"x_mean must have the teacher's mean shape {tuple(teacher.mean.shape)}, got {tuple(x_mean.shape)}"
        )
    if not float(x_cov_trace) >= 0:
        raise ConfigError(f"x_cov_trace = tr Cov(x) must be >= 0, got {x_cov_trace!r}")
    return float(((x_mean - teacher.mean) ** 2).sum()) + float(x_cov_trace)


def _kappa(teacher: GaussianTeacher, pi: Tensor, weight: Tensor | None) -> float:
    """``mu(x) = kappa (x - mean)`` with ``kappa = sum_t pi(t) w(t) c_t``."""
    c, _ = teacher.coefficients()
    return float((_pmf("pi", pi, teacher.num_timesteps) * _weight(teacher, weight) * c).sum())


def exact_sds_expectation(teacher: GaussianTeacher, x_mean: Tensor, pi: Tensor, weight: Tensor | None = None) -> Tensor:
    """Exact ``G = E_x E_{t~pi} E_eps f = kappa (x_mean - mean)``, ``kappa = sum_t pi w c_t`` (docs/theory.md §1, §10).

    Args:
        teacher: the single-Gaussian teacher. x_mean: mean of the outer draws (mean's shape, e.g. ``D``).
        pi: ``T``-dim target pmf over timesteps. weight: ``T``-dim ``w(t)`` (default ones).

    Returns:
        ``G`` with mean's shape (float64). Only the outer mean enters because ``f`` is affine in ``x``.
    """
    x_mean = torch.as_tensor(x_mean).double().cpu()
    _u2(teacher, x_mean, 0.0)  # shape check
    return _kappa(teacher, pi, weight) * (x_mean - teacher.mean)


def exact_second_moment_profile(
    teacher: GaussianTeacher, x_mean: Tensor, x_cov_trace: float, weight: Tensor | None = None
) -> Tensor:
    """Exact timestep profile ``m(t) = E_{x, eps} ||f(x, t, eps)||^2`` (docs/theory.md §5).

    ``m(t) = w_t^2 (c_t^2 (||x_mean - mean||^2 + x_cov_trace) + (1 - d_t)^2 D)``.

    Args:
        x_mean: mean of the outer draws; x_cov_trace: their ``tr Cov(x)``; weight: ``T``-dim (default ones).

    Returns:
        ``T``-dim float64 Tensor.
    """
    c, d = teacher.coefficients()
    w = _weight(teacher, weight)
    return w**2 * (c**2 * _u2(teacher, x_mean, x_cov_trace) + (1 - d) ** 2 * teacher.mean.numel())


@dataclass(frozen=True)
class WithinBetween:
    """Exact docs/theory.md §2 statistics: ``sigma_b2 = tr Cov_x(mu(x))``, ``sigma_w2 = E_x tr Cov_{t~p,eps}(rho f|x)``
    for one i.i.d. inner draw; ``M2 = E_x ||mu(x)||^2``, so ``E_{t~p}[rho^2 m] = sigma_w2 + M2``."""

    sigma_b2: float
    sigma_w2: float
    M2: float


def exact_within_between(
    teacher: GaussianTeacher,
    x_mean: Tensor,
    x_cov_trace: float,
    pi: Tensor,
    p: Tensor,
    weight: Tensor | None = None,
) -> WithinBetween:
    """Exact between/within variances for i.i.d. inner draws ``t ~ p``, ``rho = pi / p`` (docs/theory.md §2).

    ``sigma_B^2 = kappa^2 x_cov_trace`` and
    ``sigma_W^2(p) = sum_t pi(t)^2 / p(t) m(t) - kappa^2 E||x - mean||^2`` (module docstring).

    Args:
        x_mean, x_cov_trace: mean and ``tr Cov`` of the outer draws. pi: ``T``-dim target pmf.
        p: ``T``-dim proposal pmf, positive wherever ``pi`` is. weight: ``T``-dim ``w(t)`` (default ones).
    """
    T = teacher.num_timesteps
    pi, p = _pmf("pi", pi, T), _pmf("p", p, T)
    support = pi > 0
    if bool((p[support] <= 0).any()):
        raise ConfigError("proposal p must be > 0 wherever pi > 0 (else the estimator is biased)")
    kappa = _kappa(teacher, pi, weight)
    m = exact_second_moment_profile(teacher, x_mean, x_cov_trace, weight)
    M2 = kappa**2 * _u2(teacher, x_mean, x_cov_trace)
    second = float((pi[support] ** 2 / p[support] * m[support]).sum())  # E_{t~p, x, eps} ||rho f||^2
    return WithinBetween(sigma_b2=kappa**2 * float(x_cov_trace), sigma_w2=second - M2, M2=M2)


class SDSStatistics:
    """Exact statistics for fixed ``(teacher, x_mean, x_cov_trace, pi, weight)``, ``sigma_w2`` a function
    of the proposal; a holder over :func:`exact_second_moment_profile` and :func:`exact_within_between`."""

    def __init__(
        self,
        teacher: GaussianTeacher,
        x_mean: Tensor,
        x_var_trace: float,
        pi: Tensor,
        weight: Tensor | None = None,
    ) -> None:
        self.teacher, self.x_mean, self.x_var_trace, self.pi, self.weight = (
            teacher,
            x_mean,
            x_var_trace,
            pi,
            weight,
        )
        self._at_pi = exact_within_between(teacher, x_mean, x_var_trace, pi, pi, weight)

    def m(self) -> Tensor:
        """``T``-dim ``m(t) = E_{x, eps} ||f(x, t, eps)||^2``."""
        return exact_second_moment_profile(self.teacher, self.x_mean, self.x_var_trace, self.weight)

    @property
    def sigma_b2(self) -> float:
        return self._at_pi.sigma_b2

    @property
    def M2(self) -> float:
        return self._at_pi.M2

    def sigma_w2(self, p: Tensor) -> float:
        """Within variance for i.i.d. inner draws from the ``T``-dim proposal ``p``."""
        return exact_within_between(self.teacher, self.x_mean, self.x_var_trace, self.pi, p, self.weight).sigma_w2


def exact_sds_statistics(
    teacher: GaussianTeacher, x_mean: Tensor, x_var_trace: float, pi: Tensor, weight: Tensor | None = None
) -> SDSStatistics:
    """Build :class:`SDSStatistics` (kept for existing callers; new code can call the pure functions)."""
    return SDSStatistics(teacher, x_mean, x_var_trace, pi, weight)
