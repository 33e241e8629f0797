"""Streaming sufficient statistics (STYLE §2): every state is a float64 sum, so merging two trackers,
forgetting, and all-reducing across ranks are each one generic operation."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor

from carv_adapt.errors import NonFiniteError, StateError

__all__ = ["SumStatistic", "NonFinitePolicy", "Decay", "reliability_mean_se"]

NonFinitePolicy = Literal["skip", "error"]
# How a sum forgets: "linear" sums of weighted observations scale by gamma per step; "square" sums of squared
# weights (for effective sample sizes) by gamma^2; "none" never decay (counters).
Decay = Literal["linear", "square", "none"]


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
        self._decay: dict[str, Decay] = {}
        # Names by decay kind and the 0-dim states, kept as states are declared: read on every step.
        self._by_decay: dict[Decay, list[str]] = {"linear": [], "square": [], "none": []}
        self._scalar_names: list[str] = []
        self._added_later: set[str] = set()
        self.nonfinite = nonfinite
        self._warned = False
        self.add_state("num_nonfinite", torch.zeros((), dtype=torch.float64), decay="none")

    def add_state(self, name: str, default: Tensor, decay: Decay = "linear", added_later: bool = False) -> None:
        """Declare a summed state (float64) with its reset value and how it forgets. ``added_later``: checkpoints
        saved before the state existed may lack it; :meth:`load_state_dict` then starts it at its default."""
        if added_later:
            self._added_later.add(name)
        self._defaults[name] = default.to(torch.float64).clone()
        setattr(self, name, default.to(torch.float64).clone())
        if name in self._decay:  # re-declared: its old kind and shape no longer hold
            self._by_decay[self._decay[name]].remove(name)
            self._scalar_names = [n for n in self._scalar_names if n != name]
        self._decay[name] = decay
        self._by_decay[decay].append(name)
        if default.dim() == 0:
            self._scalar_names.append(name)

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
        # One fused call per decay kind: the per-step cost of forgetting stays flat in the number of sums.
        for kind, factor in (("linear", gamma), ("square", gamma * gamma)):
            names = self._by_decay[kind]
            if names:
                torch._foreach_mul_([getattr(self, n) for n in names], factor)

    def scalars(self) -> dict[str, float]:
        """Every 0-dim state as a Python float, from one host transfer (``compute`` reads many of them)."""
        names = self._scalar_names
        return dict(zip(names, torch.stack([getattr(self, n) for n in names]).tolist())) if names else {}

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
        state = {**{n: self._defaults[n] for n in self._added_later}, **state}
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


def reliability_mean_se(s_w: float, s_w2: float, s_wx: float, s_wx2: float) -> tuple[float, float]:
    """Weighted mean of per-step estimates ``x_s`` with weights ``w_s`` and its standard error.

    From the sums ``sum w``, ``sum w^2``, ``sum w x`` and ``sum w x^2`` (forgetting folded into the weights):
    the unbiased reliability-weighted variance ``V = (sum w x^2 - (sum w x)^2 / sum w) / (sum w - sum w^2 / sum w)``
    of one step's estimate, and ``se^2 = V sum w^2 / (sum w)^2``. ``(nan, inf)`` before the first step; ``se = inf``
    until two steps with weight are seen.
    """
    import math

    if s_w <= 0:
        return math.nan, math.inf
    mean = s_wx / s_w
    den = s_w - s_w2 / s_w
    if den <= 1e-12 * s_w:
        return mean, math.inf
    var = max(s_wx2 - s_wx * s_wx / s_w, 0.0) / den
    return mean, math.sqrt(var * s_w2) / s_w
