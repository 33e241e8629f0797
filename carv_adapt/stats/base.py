"""Streaming sufficient statistics (STYLE §2): every state is a float64 sum, so merging two trackers,
forgetting, and all-reducing across ranks are each one generic operation."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor

from carv_adapt.errors import NonFiniteError, StateError

__all__ = ["SumStatistic", "NonFinitePolicy"]

NonFinitePolicy = Literal["skip", "error"]


def all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite. A NaN or an infinity makes the sum non-finite, so one reduction
    answers the common case; only a non-finite sum (possibly an overflow of finite values) pays the exact check."""
    if x.numel() == 0:
        return True
    if bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


class SumStatistic:
    """Base class: states declared once with :meth:`add_state`, all reduced by summation.

    Subclasses implement ``update`` (accumulate) and ``compute`` (derive, without mutating).
    ``nonfinite`` decides what happens to an observation containing NaN/Inf: ``"skip"`` drops it and
    counts it in ``num_nonfinite`` (warning once), ``"error"`` raises :class:`NonFiniteError`.
    """

    def __init__(self, nonfinite: NonFinitePolicy = "skip") -> None:
        self._defaults: dict[str, Tensor] = {}
        self._no_decay: set[str] = set()
        self.nonfinite = nonfinite
        self._warned = False
        self.add_state("num_nonfinite", torch.zeros((), dtype=torch.float64), decays=False)

    def add_state(self, name: str, default: Tensor, decays: bool = True) -> None:
        """Declare a summed state (float64) with its reset value."""
        self._defaults[name] = default.to(torch.float64).clone()
        setattr(self, name, default.to(torch.float64).clone())
        if not decays:
            self._no_decay.add(name)

    @property
    def state_names(self) -> list[str]:
        return list(self._defaults)

    def reset(self) -> None:
        """Restore every state to its default."""
        for name, default in self._defaults.items():
            setattr(self, name, default.clone())

    def decay(self, gamma: float) -> None:
        """Exponential forgetting: scale every decaying sum by ``gamma`` in ``(0, 1]``."""
        if gamma == 1.0:
            return
        # One fused call for all states: the per-step cost of forgetting stays flat in the number of sums.
        torch._foreach_mul_([getattr(self, n) for n in self._defaults if n not in self._no_decay], gamma)

    def _add(self, names: tuple[str, ...], values: tuple[float, ...]) -> None:
        """Add Python floats to several states in one fused call (per-step updates are many tiny adds)."""
        torch._foreach_add_([getattr(self, n) for n in names], list(values))

    def merge(self, other: SumStatistic) -> None:
        """Add ``other``'s sums into this one (equals one joint update over both streams)."""
        if type(other) is not type(self) or other.state_names != self.state_names:
            raise StateError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for name in self._defaults:
            a, b = getattr(self, name), getattr(other, name)
            if a.shape != b.shape:
                raise StateError(f"state {name!r}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
            a.add_(b)

    def flat(self) -> Tensor:
        """All states concatenated into one float64 vector (one all-reduce for every state)."""
        return torch.cat([getattr(self, n).reshape(-1) for n in self._defaults])

    def load_flat(self, vec: Tensor) -> None:
        """Inverse of :meth:`flat`."""
        pos = 0
        for name in self._defaults:
            cur = getattr(self, name)
            n = cur.numel()
            setattr(self, name, vec[pos : pos + n].reshape(cur.shape).to(torch.float64).clone())
            pos += n
        if pos != vec.numel():
            raise StateError(f"flat vector has {vec.numel()} entries, expected {pos}")

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).clone() for name in self._defaults}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self._defaults) - set(state)
        extra = set(state) - set(self._defaults)
        if missing or extra:
            raise StateError(
                f"{type(self).__name__}.load_state_dict: missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        for name in self._defaults:
            value = torch.as_tensor(state[name], dtype=torch.float64)
            if value.shape != self._defaults[name].shape:
                raise StateError(
                    f"{type(self).__name__}.{name}: shape {tuple(value.shape)} does not match "
                    f"{tuple(self._defaults[name].shape)} (was it configured differently?)"
                )
            setattr(self, name, value.clone())

    def _finite_or_reject(self, what: str, *tensors: Tensor) -> bool:
        """True if all finite; else apply the non-finite policy and return False."""
        if all(all_finite(t) for t in tensors):
            return True
        if self.nonfinite == "error":
            raise NonFiniteError(
                f"{type(self).__name__}: non-finite value in {what}; pass nonfinite='skip' to drop and count them"
            )
        self.num_nonfinite += 1
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: dropped a non-finite {what} (counted in num_nonfinite; warning once)",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
