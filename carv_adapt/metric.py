"""The metric the optimizer sees (docs/theory.md §13): Euclidean, or the per-coordinate scaling of an
adaptive optimizer (Adam, AdamW, RMSprop, Adagrad), read from its second-moment state."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError

__all__ = ["Preconditioner"]

# Optimizer state keys holding a per-coordinate second moment, with how to turn them into a scale.
_SECOND_MOMENTS = ("exp_avg_sq", "square_avg", "sum")


class Preconditioner:
    """The diagonal ``D`` an adaptive optimizer applies to the gradient, flattened over ``params`` in order.

    Under Adam the update is ``lr * m_hat / (sqrt(v_hat) + eps)``: the variance that moves the parameters is
    ``tr(D Cov D)`` with ``D = 1 / (sqrt(v_hat) + eps)``. Probe gradients multiplied by :meth:`scale` give
    between/within variances and the signal ``|G|^2`` in that metric.

    Args:
        optimizer: a ``torch.optim`` optimizer keeping per-parameter second moments.
        params: the parameters whose flattened gradients the probe returns, in the same order.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> None:
        if optimizer is None:
            raise ConfigError("metric='preconditioned' needs optimizer=: pass the optimizer whose scaling to use")
        self.optimizer, self.params = optimizer, list(params)
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [i for i, p in enumerate(self.params) if id(p) not in known]
        if missing:
            raise ConfigError(f"params at positions {missing} are not optimized by {type(optimizer).__name__}")
        eps = [g.get("eps", None) for g in optimizer.param_groups]
        if not any(k in g for g in optimizer.param_groups for k in ("betas", "alpha", "lr_decay")) or all(
            e is None for e in eps
        ):
            raise ConfigError(
                f"metric='preconditioned' needs an optimizer with per-coordinate second moments (Adam, AdamW, "
                f"RMSprop, Adagrad), got {type(optimizer).__name__}: use metric='euclidean'"
            )

    def _group(self, p: Tensor) -> dict:
        for g in self.optimizer.param_groups:
            if any(q is p for q in g["params"]):
                return g
        raise ConfigError("parameter not found in the optimizer")  # pragma: no cover - checked in __init__

    def scale(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor | None:
        """``P``-dim ``D``, or None before the optimizer's first step (no second moments yet: Euclidean)."""
        parts = []
        for p in self.params:
            state = self.optimizer.state.get(p, {})
            key = next((k for k in _SECOND_MOMENTS if k in state), None)
            if key is None:
                return None
            g = self._group(p)
            v = state[key].detach().to(torch.float64)
            if "betas" in g:  # Adam family: bias-corrected exp_avg_sq
                step = float(state.get("step", 1))
                v = v / max(1.0 - g["betas"][1] ** max(step, 1.0), 1e-12)
            parts.append((1.0 / (v.sqrt() + g.get("eps", 1e-8))).reshape(-1))
        d = torch.cat(parts)
        return d.to(device=device or d.device, dtype=dtype)


def in_metric(probe: tuple[Tensor, Tensor], preconditioner: Preconditioner | None) -> tuple[Tensor, Tensor] | None:
    """``probe`` (two ``N x P`` gradients) in the optimizer's metric: each coordinate scaled by ``D``; unchanged
    without a preconditioner; None while the optimizer has no second moments yet (the probe is then skipped)."""
    if preconditioner is None:
        return probe
    d = preconditioner.scale(probe[0].device, probe[0].dtype)
    if d is None:
        return None
    if d.numel() != probe[0].shape[-1]:
        raise ConfigError(
            f"probe gradients have {probe[0].shape[-1]} coordinates but the preconditioner's params have "
            f"{d.numel()}: pass the same params, in the same order, to split_half_probe and the controller"
        )
    return probe[0] * d, probe[1] * d
