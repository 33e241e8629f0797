"""The shipped control variate for SDS-type integrands (docs/theory.md §14): the exact epsilon prediction of a
per-class diagonal Gaussian data model ``N(m_c, diag(s_c^2))``, which is linear in ``x_t``.

For such data ``eps_G(x_t, t) = sigma_t (x_t - alpha_t m) / (alpha_t^2 s^2 + sigma_t^2)`` elementwise; with
classifier-free guidance the guided combination ``eps_u + gs (eps_c - eps_u)`` of an unconditional and a class
Gaussian is still ``A_t x_t + b_t``. With ``x_t = alpha_t x + sigma_t eps`` the surrogate
``g = w(t) (eps_G(x_t, t) - eps)`` has the exact conditional mean ``E_eps[g | x, t] = w(t) (A_t alpha_t x + b_t)``,
and ``g - E[g | x, t] = w(t) (A_t sigma_t - 1) eps``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from carv_adapt.control_variate import ControlVariate
from carv_adapt.errors import ConfigError, ShapeError

__all__ = ["GaussianSurrogate"]


class GaussianSurrogate(ControlVariate):
    """``g = w(t) (eps_G(alpha_t x + sigma_t eps, t) - eps)`` for per-class diagonal Gaussians (module docstring).

    Args:
        alphas_cumprod: ``T``-dim VP schedule (any :class:`~carv_adapt.teachers.Teacher`'s ``alphas_cumprod``).
        means, stds: ``C x ...`` per-class mean and standard deviation of the data (latents), ``stds > 0``.
        weight: ``T``-dim ``w(t)`` of the integrand (default ones).
        guidance_scale: with ``null_mean`` / ``null_std`` (the unconditional Gaussian, per-sample shape), the
            guided ``eps_u + guidance_scale (eps_c - eps_u)``; None: the class Gaussian alone.
    ``cond`` is an ``N``-dim long Tensor of class indices (None: class 0, for a single class).
    """

    def __init__(
        self,
        alphas_cumprod: Tensor,
        means: Tensor,
        stds: Tensor,
        weight: Tensor | None = None,
        guidance_scale: float | None = None,
        null_mean: Tensor | None = None,
        null_std: Tensor | None = None,
    ) -> None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.means, self.stds = torch.as_tensor(means).double(), torch.as_tensor(stds).double()
        if self.means.dim() < 2 or self.means.shape != self.stds.shape:
            raise ShapeError(f"means {tuple(self.means.shape)} and stds {tuple(self.stds.shape)}: need equal C x ...")
        if not bool((self.stds > 0).all() & self.stds.isfinite().all() & self.means.isfinite().all()):
            raise ConfigError("GaussianSurrogate: stds must be finite and > 0 and means finite")
        T = abar.numel()
        self.weight = torch.ones(T, dtype=torch.float64) if weight is None else torch.as_tensor(weight).double()
        if self.weight.shape != (T,):
            raise ShapeError(f"weight must be {T}-dim (one per timestep), got {tuple(self.weight.shape)}")
        guided = guidance_scale is not None
        if guided and (null_mean is None or null_std is None):
            raise ConfigError(
                f"guidance_scale={guidance_scale!r} needs null_mean= and null_std= (the unconditional fit)"
            )
        self.guidance_scale = None if not guided else float(guidance_scale)  # type: ignore[arg-type]
        self.alpha, self.sigma = abar.sqrt(), (1 - abar).sqrt()
        A, b = self._linear(self.means, self.stds)  # T x C x D each
        if guided:
            nm = torch.as_tensor(null_mean).double().reshape(1, -1)
            ns = torch.as_tensor(null_std).double().reshape(1, -1)
            A_u, b_u = self._linear(nm, ns)
            gs = self.guidance_scale
            A, b = A_u + gs * (A - A_u), b_u + gs * (b - b_u)
        self.A, self.b = A, b

    def _linear(self, m: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """``(A, b)``, ``T x C x D``: ``eps_G = A x_t + b`` for ``N(m, diag(s^2))`` data."""
        a, sg = self.alpha[:, None, None], self.sigma[:, None, None]
        m, s = m.reshape(m.shape[0], -1)[None], s.reshape(s.shape[0], -1)[None]
        A = sg / (a * a * s * s + sg * sg)
        return A, -A * a * m

    @classmethod
    def fit(
        cls,
        latents: Tensor,
        labels: Tensor | None,
        alphas_cumprod: Tensor,
        *,
        num_classes: int | None = None,
        min_std: float = 1e-3,
        **kw: Any,
    ) -> GaussianSurrogate:
        """Fit per-class means and stds from ``M x ...`` data latents (encoded data or the teacher's samples) with
        ``M``-dim integer ``labels`` (None: one class); with ``guidance_scale=`` the unconditional Gaussian is
        fitted on all of them. ``kw`` go to the constructor (``weight``, ``guidance_scale``)."""
        x = latents.detach().double().reshape(latents.shape[0], -1)
        y = torch.zeros(x.shape[0], dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
        C = int(y.max()) + 1 if num_classes is None else int(num_classes)
        means, stds = torch.zeros(C, x.shape[1], dtype=torch.float64), torch.ones(C, x.shape[1], dtype=torch.float64)
        for c in range(C):
            xc = x[y == c]
            if xc.shape[0] < 2:
                raise ConfigError(f"GaussianSurrogate.fit: class {c} has {xc.shape[0]} sample(s); need at least 2")
            means[c], stds[c] = xc.mean(0), xc.std(0).clamp_min(min_std)
        shape = (C, *latents.shape[1:])
        if kw.get("guidance_scale") is not None:
            kw = {"null_mean": x.mean(0), "null_std": x.std(0).clamp_min(min_std), **kw}
        return cls(alphas_cumprod, means.reshape(shape), stds.reshape(shape), **kw)

    def _coef(self, x: Tensor, t: Tensor, cond: Any) -> tuple[Tensor, Tensor, Tensor]:
        n, k = t.shape
        if x.shape[0] != n or x[0].numel() != self.A.shape[-1]:
            raise ShapeError(
                f"GaussianSurrogate: x {tuple(x.shape)} and t {tuple(t.shape)}; expected x N x ... with "
                f"{self.A.shape[-1]} entries per draw and t N x K"
            )
        c = torch.zeros(n, dtype=torch.long) if cond is None else torch.as_tensor(cond).long().cpu()
        if c.shape != (n,) or bool((c < 0).any() | (c >= self.A.shape[1]).any()):
            raise ShapeError(f"cond: {n} class indices in [0, {self.A.shape[1]}) expected, got {c.tolist()}")
        tt = t.cpu()
        A = self.A[tt, c[:, None]]  # N x K x D
        b = self.b[tt, c[:, None]]
        return A, b, self.weight[tt][..., None]

    def surrogate(self, x: Tensor, t: Tensor, eps: Tensor, cond: Any = None) -> Tensor:
        A, b, w = self._coef(x, t, cond)
        tt = t.cpu()
        a, s = self.alpha[tt][..., None], self.sigma[tt][..., None]
        xf = x.detach().double().cpu().reshape(x.shape[0], 1, -1)
        e = eps.double().cpu().reshape(*t.shape, -1)
        g = w * (A * (a * xf + s * e) + b - e)
        return g.reshape(eps.shape).to(device=eps.device, dtype=eps.dtype)

    def conditional_mean(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        A, b, w = self._coef(x, t, cond)
        a = self.alpha[t.cpu()][..., None]
        xf = x.detach().double().cpu().reshape(x.shape[0], 1, -1)
        mu = w * (A * a * xf + b)
        return mu.reshape(*t.shape, *x.shape[1:]).to(device=x.device, dtype=x.dtype)
