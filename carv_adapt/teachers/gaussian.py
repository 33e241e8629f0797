"""Analytic teachers with exact epsilon prediction (SPEC §10): Gaussian and Gaussian-mixture data on a
VP schedule, the SDS-type integrand, and its exact expectation and statistics for the single Gaussian.

For data ``x0 ~ N(mean, std^2 I)`` the noised marginal is ``N(alpha mean, (alpha^2 std^2 + sigma^2) I)``, so
``eps_hat(z, t) = sigma (z - alpha mean) / v_t`` with ``v_t = alpha_t^2 std^2 + sigma_t^2``. The SDS-type
integrand ``f = w(t) (eps_hat(alpha x + sigma eps, t) - eps)`` is then affine in ``(x, eps)``:
``f = w (c_t (x - mean) + (d_t - 1) eps)`` with ``c_t = alpha_t sigma_t / v_t`` and ``d_t = sigma_t^2 / v_t``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError
from carv_adapt.teachers.base import Teacher
from carv_adapt.teachers.schedules import ddpm_alphas_cumprod

__all__ = [
    "GaussianTeacher",
    "GaussianMixtureTeacher",
    "sds_integrand",
    "sds_weight",
    "exact_sds_expectation",
    "exact_sds_statistics",
    "SDSStatistics",
]


class GaussianTeacher(Teacher):
    """Exact teacher for ``x0 ~ N(mean, std^2 I)``; ``mean`` has the per-sample shape (e.g. ``D``)."""

    def __init__(self, mean: Tensor, std: float = 1.0, alphas_cumprod: Tensor | None = None) -> None:
        if not std > 0:
            raise ConfigError(f"std must be > 0, got {std!r}")
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = float(std)
        self.alphas_cumprod = (ddpm_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).double()

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """``(c_t, d_t)`` (``T``-dim): ``E_eps f / w = c_t (x - mean)`` and ``d eps_hat / d eps = d_t``."""
        a2 = self.alphas_cumprod
        v = a2 * self.std**2 + (1 - a2)
        return a2.sqrt() * (1 - a2).sqrt() / v, (1 - a2) / v

    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        a2 = self.alphas_cumprod.to(x_t.device)[t]
        view = (-1,) + (1,) * (x_t.dim() - 1)
        a, s = a2.sqrt().view(view), (1 - a2).sqrt().view(view)
        v = a**2 * self.std**2 + s**2
        mean = self.mean.to(x_t.device)
        return (s * (x_t.double() - a * mean) / v).to(x_t.dtype)


class GaussianMixtureTeacher(Teacher):
    """Exact teacher for an isotropic mixture ``sum_j w_j N(mu_j, s_j^2 I)`` in ``R^D``.

    ``eps_hat = -sigma_t * score``; the score of the noised mixture is the responsibility-weighted score
    of its components, computed with log-sum-exp.
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor, alphas_cumprod: Tensor | None = None) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        M = self.weights.numel()
        if self.means.dim() != 2 or self.means.shape[0] != M or self.stds.shape != (M,):
            raise ConfigError(
                f"need weights [M], means [M, D], stds [M]; got {tuple(self.weights.shape)}, "
                f"{tuple(self.means.shape)}, {tuple(self.stds.shape)}"
            )
        if bool((self.weights <= 0).any()) or bool((self.stds <= 0).any()):
            raise ConfigError("mixture weights and stds must be > 0")
        self.weights = self.weights / self.weights.sum()
        self.alphas_cumprod = (ddpm_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).double()

    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        z = x_t.double().reshape(x_t.shape[0], -1)  # B x D
        a2 = self.alphas_cumprod.to(z.device)[t][:, None]  # B x 1
        a, s = a2.sqrt(), (1 - a2).sqrt()
        var = a2 * self.stds[None, :] ** 2 + s**2  # B x M
        diff = z[:, None, :] - a[:, :, None] * self.means[None]  # B x M x D
        D = z.shape[1]
        logp = self.weights.log()[None] - 0.5 * (diff**2).sum(-1) / var - 0.5 * D * var.log()
        resp = torch.softmax(logp, dim=1)  # B x M
        score = -(resp[..., None] * diff / var[..., None]).sum(1)  # B x D
        return (-s * score).reshape(x_t.shape).to(x_t.dtype)


def sds_weight(alphas_cumprod: Tensor, kind: Literal["ones", "sigma2"] = "sigma2") -> Tensor:
    """``w(t)`` of the SDS objective: ``"ones"`` or ``"sigma2"`` (``1 - alphabar_t``, DreamFusion's choice)."""
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
    """The SDS-type contribution ``f = w(t) (eps_hat(alpha_t x + sigma_t eps, t) - eps)`` (SPEC §1).

    Args:
        x: ``N x ...`` outer draws (renders or latents). t: ``N x K`` long. eps: ``N x K x ...``.
        weight: ``T``-dim ``w(t)`` (default ones).

    Returns:
        ``N x K x ...`` contributions, without an autograd graph (SDS never differentiates the teacher).
    """
    eps_hat = teacher.eps_draws(x, t, eps, cond=cond, chunk_size=chunk_size)
    f = eps_hat - eps
    if weight is not None:
        w = weight.to(device=f.device, dtype=f.dtype)[t.to(f.device)]
        f = w.reshape(*t.shape, *([1] * (f.dim() - 2))) * f
    return f


def exact_sds_expectation(teacher: GaussianTeacher, x_mean: Tensor, pi: Tensor, weight: Tensor | None = None) -> Tensor:
    """``G = sum_t pi(t) w(t) c_t (E[x] - mean)``: exact, since ``f`` is affine in ``x`` and ``E eps = 0``."""
    c, _ = teacher.coefficients()
    w = torch.ones_like(c) if weight is None else weight.double()
    return float((pi.double() * w * c).sum()) * (x_mean.double() - teacher.mean)


class SDSStatistics:
    """Exact per-timestep statistics of the SDS integrand for a :class:`GaussianTeacher` when the outer
    draws are ``x ~ (x_mean, Cov)`` with ``tr Cov = x_var_trace`` (SPEC §2, §5).

    With ``u = x - mean``: ``mu(x) = sum_t pi w c u = kappa u``, ``m(t) = w^2 (c^2 E||u||^2 + (d-1)^2 D)``.
    """

    def __init__(
        self, teacher: GaussianTeacher, x_mean: Tensor, x_var_trace: float, pi: Tensor, weight: Tensor | None = None
    ) -> None:
        self.c, self.d = teacher.coefficients()
        self.w = torch.ones_like(self.c) if weight is None else weight.double()
        self.pi = pi.double()
        u = x_mean.double() - teacher.mean
        self.D = u.numel()
        self.u2 = float((u**2).sum()) + float(x_var_trace)  # E ||x - mean||^2
        self.var_x = float(x_var_trace)
        self.kappa = float((self.pi * self.w * self.c).sum())

    def m(self) -> Tensor:
        """``T``-dim ``m(t) = E_{x, eps} ||f(x, t, eps)||^2``."""
        return self.w**2 * (self.c**2 * self.u2 + (self.d - 1) ** 2 * self.D)

    @property
    def sigma_b2(self) -> float:
        """``tr Cov_x(mu(x)) = kappa^2 tr Cov(x)``."""
        return self.kappa**2 * self.var_x

    @property
    def M2(self) -> float:
        """``E_x ||mu(x)||^2 = kappa^2 E||x - mean||^2``."""
        return self.kappa**2 * self.u2

    def sigma_w2(self, p: Tensor) -> float:
        """Within variance for i.i.d. inner draws from a ``T``-dim proposal ``p``: ``E_p[rho^2 m] - M2``."""
        support = self.pi > 0
        return float((self.pi[support] ** 2 / p.double()[support] * self.m()[support]).sum()) - self.M2


def exact_sds_statistics(
    teacher: GaussianTeacher, x_mean: Tensor, x_var_trace: float, pi: Tensor, weight: Tensor | None = None
) -> SDSStatistics:
    """Build :class:`SDSStatistics`."""
    return SDSStatistics(teacher, x_mean, x_var_trace, pi, weight)
