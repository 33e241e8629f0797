"""The teacher extension point: anything that predicts epsilon on a VP (DDPM) schedule."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from carv_adapt.errors import ShapeError

__all__ = ["Teacher"]


class Teacher(ABC):
    """A frozen diffusion teacher on a variance-preserving schedule.

    Subclasses set ``alphas_cumprod`` (a ``T``-dim float64 Tensor, ``alphabar_t`` for
    ``t = 0..T-1``) and implement :meth:`predict_eps`. Everything else (noising, evaluating all
    ``N x K`` inner draws of a plan) is shared.
    """

    alphas_cumprod: Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @abstractmethod
    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Predict the noise in ``x_t``.

        Args:
            x_t: ``B x ...`` noisy samples.
            t: ``B``-dim long Tensor of timesteps.
            cond: optional conditioning, one entry per row of ``x_t`` (teacher specific).

        Returns:
            ``B x ...`` epsilon prediction, same shape as ``x_t``.
        """

    def alpha_sigma(self, t: Tensor, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t) = (sqrt(alphabar_t), sqrt(1 - alphabar_t))`` for a long Tensor ``t``."""
        abar = self.alphas_cumprod.to(device=device)[t.to(device)]
        return abar.sqrt().to(dtype), (1.0 - abar).sqrt().to(dtype)

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``x_t = alpha_t x0 + sigma_t eps`` with ``t`` broadcast over the trailing dims of ``x0``."""
        if x0.shape != eps.shape or t.shape != x0.shape[: t.dim()]:
            raise ShapeError(
                f"add_noise: x0 {tuple(x0.shape)}, eps {tuple(eps.shape)} and t {tuple(t.shape)} "
                "must share leading dims (x0 and eps equal)"
            )
        a, s = self.alpha_sigma(t, x0.dtype, x0.device)
        view = t.shape + (1,) * (x0.dim() - t.dim())
        return a.view(view) * x0 + s.view(view) * eps

    def eps_draws(
        self,
        x0: Tensor,
        t: Tensor,
        eps: Tensor,
        cond: Any = None,
        chunk_size: int | None = None,
    ) -> Tensor:
        """Teacher predictions for every inner draw of a plan, without an autograd graph.

        Args:
            x0: ``N x ...`` outer draws (clean samples or latents).
            t: ``N x K`` long timesteps.
            eps: ``N x K x ...`` noises.
            cond: optional per-outer-draw conditioning (length ``N``), repeated over ``K``.
            chunk_size: evaluate at most this many inner draws per teacher call (memory cap).

        Returns:
            ``N x K x ...`` epsilon predictions.
        """
        n, k = t.shape
        if eps.shape[:2] != (n, k) or eps.shape[2:] != x0.shape[1:] or x0.shape[0] != n:
            raise ShapeError(
                f"eps_draws: x0 {tuple(x0.shape)}, t {tuple(t.shape)}, eps {tuple(eps.shape)}; "
                "expected x0 N x ..., t N x K, eps N x K x ..."
            )
        x_t = self.add_noise(x0.detach().unsqueeze(1).expand_as(eps), eps, t).reshape(n * k, *x0.shape[1:])
        flat_t = t.reshape(-1)
        flat_cond = _repeat_cond(cond, k)
        step = n * k if chunk_size is None else max(1, int(chunk_size))
        out = []
        with torch.no_grad():
            for lo in range(0, n * k, step):
                c = None if flat_cond is None else flat_cond[lo : lo + step]
                out.append(self.predict_eps(x_t[lo : lo + step], flat_t[lo : lo + step], c))
        return torch.cat(out).reshape(n, k, *x0.shape[1:])


def _repeat_cond(cond: Any, k: int) -> Any:
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond.repeat_interleave(k, dim=0)
    return [c for c in cond for _ in range(k)]
