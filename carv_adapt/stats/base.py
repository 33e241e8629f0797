"""Streaming sufficient statistics (STYLE §2): every state is a float64 sum, so merging two trackers,
forgetting, and all-reducing across ranks are each one generic operation."""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from carv_adapt.errors import NonFiniteError, StateError

__all__ = ["SumStatistic", "NonFinitePolicy", "Decay", "reliability_mean_se", "precision_mean_se"]

NonFinitePolicy = Literal["skip", "error"]
# Deferred observations (a subclass's ``update(..., defer=True)``) are reduced together once this many are held.
DEFER_STEPS = 32
# How a sum forgets: "linear" sums of weighted observations scale by gamma per step; "square" sums of squared
# weights (for effective sample sizes) by gamma^2; "slow" ones by gamma^(1/8), a memory eight times longer (for
# what changes more slowly than the level it splits, docs/theory.md §7.1); "none" never decay (counters).
Decay = Literal["linear", "square", "slow", "none"]
_EXPONENT: dict[str, float] = {"linear": 1.0, "square": 2.0, "slow": 0.125, "none": 0.0}


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

    Every state is a view into one flat float64 CPU buffer, so forgetting, merging, flattening for an all-reduce
    and adding a step's scalars are each one operation on it (in NumPy, which shares the buffer's memory: per-step
    updates are a few small numbers, where a torch call's dispatch costs more than the arithmetic). Subclasses
    update their states in place; rebinding a state attribute would detach it from the buffer.
    """

    def __init__(self, nonfinite: NonFinitePolicy = "skip") -> None:
        self._defaults: dict[str, Tensor] = {}
        self._decay: dict[str, Decay] = {}
        self._layout: dict[str, tuple[int, torch.Size]] = {}  # offset and shape of each state in the buffer
        self._buf = torch.zeros(0, dtype=torch.float64)
        self._exponents = torch.zeros(0, dtype=torch.float64)  # per entry: 1 linear, 2 square, 1/8 slow, 0 never decays
        self._factor: tuple[float, np.ndarray] | None = None  # (gamma, gamma ** exponents), cached
        self._add_index: dict[tuple[str, ...], np.ndarray] = {}
        self._scalar_names: list[str] = []
        self._scalar_index: np.ndarray | None = None  # buffer offsets of the 0-dim states, in name order
        self._added_later: set[str] = set()
        # Deferred observations, the forgetting factor each has missed since it came, and, while one is added, that
        # factor per buffer entry (a square-decaying sum missed its square).
        self._pending: list[Any] = []
        self._missed = np.ones(DEFER_STEPS)
        self._add_scale: np.ndarray | None = None  # S x entries while S deferred observations are added at once
        self.nonfinite = nonfinite
        self._warned = False
        self.add_state("num_nonfinite", torch.zeros((), dtype=torch.float64), decay="none")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # States declared while a subclass's __init__ runs are laid out once, when the outermost __init__ returns:
        # one buffer build instead of one per declaration (a tracker declares ~30 states).
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def __init__(self: SumStatistic, *args: Any, **kw: Any) -> None:
            outer = not self.__dict__.get("_declaring", False)
            self.__dict__["_declaring"] = True
            try:
                init(self, *args, **kw)
            except BaseException:
                self.__dict__["_declaring"] = not outer
                raise
            if outer:
                self.__dict__["_declaring"] = False
                self._lay_out_declared()

        cls.__init__ = __init__  # type: ignore[misc]

    def add_state(self, name: str, default: Tensor, decay: Decay = "linear", added_later: bool = False) -> None:
        """Declare a summed state (float64) with its reset value and how it forgets. ``added_later``: checkpoints
        saved before the state existed may lack it; :meth:`load_state_dict` then starts it at its default."""
        if added_later:
            self._added_later.add(name)
        self._defaults[name] = default.detach().to("cpu", torch.float64).clone()
        self._decay[name] = decay
        self._scalar_names = [n for n in self._scalar_names if n != name] + ([name] if default.dim() == 0 else [])
        if not self.__dict__.get("_declaring", False):
            self._lay_out_declared(name)

    def _lay_out_declared(self, redeclared: str | None = None) -> None:
        """Lay out every declared state: those already in the buffer keep their values (but ``redeclared``), the
        others start at their defaults."""
        values = {n: getattr(self, n).clone() for n in self._layout if n != redeclared}
        for n, d in self._defaults.items():
            values.setdefault(n, d)
        self._relayout(values)

    def _relayout(self, values: dict[str, Tensor]) -> None:
        """Rebuild the buffer for the declared states (declaration happens at construction, not per step)."""
        pos, parts, exps = 0, [], []
        self._layout = {}
        for n, d in self._defaults.items():
            self._layout[n] = (pos, d.shape)
            parts.append(values[n].reshape(-1))
            exps.append(torch.full((d.numel(),), _EXPONENT[self._decay[n]]))
            pos += d.numel()
        self._buf = torch.cat(parts).to(torch.float64) if parts else torch.zeros(0, dtype=torch.float64)
        self._exponents = torch.cat(exps).double() if exps else torch.zeros(0, dtype=torch.float64)
        self._factor, self._add_index, self._scalar_index = None, {}, None
        self._bind()

    def _bind(self) -> None:
        for n, (off, shape) in self._layout.items():
            setattr(self, n, self._buf[off : off + shape.numel()].view(shape))
        self._arr = self._buf.numpy()  # the buffer's memory seen by NumPy: per-step adds and forgetting use it

    def __deepcopy__(self, memo: dict) -> SumStatistic:
        new = copy.copy(self)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k not in self._layout and k != "_buf":
                new.__dict__[k] = copy.deepcopy(v, memo)
        new._buf = self._buf.clone()
        new._bind()  # the copy's states view its own buffer
        return new

    @property
    def state_names(self) -> list[str]:
        return list(self._defaults)

    def reset(self) -> None:
        """Restore every state to its default."""
        self._pending = []
        self._buf.copy_(torch.cat([d.reshape(-1) for d in self._defaults.values()]))

    def decay(self, gamma: float) -> None:
        """Exponential forgetting: scale every decaying sum by ``gamma`` in ``(0, 1]``."""
        if gamma == 1.0:
            return
        if self._pending:
            self._decay_deferred(gamma)
        if self._factor is None or self._factor[0] != gamma:
            self._factor = (gamma, (gamma**self._exponents).numpy())
        self._arr *= self._factor[1]

    def _decay_deferred(self, gamma: float) -> None:
        self._missed[: len(self._pending)] *= gamma

    def _missed_scale(self, factors: np.ndarray) -> np.ndarray:
        """``S x entries``: what each of ``S`` deferred observations, having missed the linear forgetting
        ``factors[s]``, is scaled by in each buffer entry (a square-decaying sum missed its square)."""
        return np.asarray(factors, dtype=np.float64)[:, None] ** self._exponents.numpy()[None, :]

    @contextmanager
    def _scaled(self, missed: np.ndarray) -> Iterator[None]:
        """While held, :meth:`_add` adds ``len(missed)`` deferred observations, each scaled by the forgetting it
        missed."""
        self._add_scale = self._missed_scale(missed)
        try:
            yield
        finally:
            self._add_scale = None

    def _defer(self, item: Any) -> None:
        """Hold one observation for :meth:`flush` (which runs once :data:`DEFER_STEPS` are held)."""
        self._missed[len(self._pending)] = 1.0
        self._pending.append(item)
        if len(self._pending) >= DEFER_STEPS:
            self.flush()

    def flush(self) -> None:
        """Reduce the deferred observations, in order, each with the forgetting it missed."""
        if self._pending:
            pending, missed = self._pending, self._missed[: len(self._pending)].copy()
            self._pending = []
            self._reduce_deferred(pending, missed)

    def _reduce_deferred(self, pending: list[Any], missed: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__} defers nothing")

    def folded(self) -> SumStatistic:
        """This statistic with any deferred observations folded in: itself when nothing is deferred, else a copy.
        Reads go through it, so when deferred work is reduced never depends on when the sums were read."""
        if not self._pending:
            return self
        c = copy.copy(self)  # shares the deferred inputs, which the fold only reads
        c._buf, c._missed, c._pending = self._buf.clone(), self._missed.copy(), list(self._pending)
        c._bind()
        c.flush()
        return c

    def scalars(self) -> dict[str, float]:
        """Every 0-dim state as a Python float (``compute`` reads many of them)."""
        if self._scalar_index is None or len(self._scalar_index) != len(self._scalar_names):
            self._scalar_index = np.array([self._layout[n][0] for n in self._scalar_names], dtype=np.int64)
        return dict(zip(self._scalar_names, self.folded()._arr[self._scalar_index].tolist()))

    def _add(self, names: tuple[str, ...], values: Sequence[float | np.ndarray]) -> None:
        """Add to several 0-dim states at once (per-step updates are many tiny adds). Each value is a float, or an
        ``S``-vector when ``S`` deferred observations are added together (while :attr:`_add_scale` holds their
        ``S x entries`` forgetting): their scaled sum is added."""
        idx = self._add_index.get(names)
        if idx is None:
            idx = self._add_index[names] = np.array([self._layout[n][0] for n in names], dtype=np.int64)
        arr = self._arr
        if self._add_scale is None:
            arr[idx] += np.asarray(values, dtype=np.float64)
            return
        v = np.empty((self._add_scale.shape[0], len(values)))
        for j, x in enumerate(values):  # column by column: one stack of broadcast views cost ~10x more per call
            v[:, j] = x
        # Added row after row (cumsum is sequential, unlike a pairwise sum): the sums of a batch of deferred
        # observations equal, to the bit, those of adding them one at a time as they came.
        arr[idx] = np.cumsum(np.concatenate([arr[idx][None], v * self._add_scale[:, idx]]), axis=0)[-1]

    def merge(self, other: SumStatistic) -> None:
        """Add ``other``'s sums into this one (equals one joint update over both streams)."""
        if type(other) is not type(self) or other.state_names != self.state_names:
            raise StateError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for name in self._defaults:
            a, b = getattr(self, name), getattr(other, name)
            if a.shape != b.shape:
                raise StateError(f"state {name!r}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        self._buf.add_(other.folded()._buf)  # sums are linear: this one's deferred observations can stay deferred

    def flat(self) -> Tensor:
        """All states concatenated into one float64 vector (one all-reduce for every state)."""
        return self.folded()._buf.clone()

    def load_flat(self, vec: Tensor) -> None:
        """Inverse of :meth:`flat`."""
        if vec.numel() != self._buf.numel():
            raise StateError(f"flat vector has {vec.numel()} entries, expected {self._buf.numel()}")
        self._pending = []  # the sums of flat(): deferred observations are in them
        self._buf.copy_(vec.reshape(-1).to(torch.float64))

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
        values = {}
        for name in self._defaults:
            value = torch.as_tensor(state[name], dtype=torch.float64)
            if value.shape != self._defaults[name].shape:
                raise StateError(
                    f"{type(self).__name__}.{name}: shape {tuple(value.shape)} does not match "
                    f"{tuple(self._defaults[name].shape)} (was it configured differently?)"
                )
            values[name] = value
        self._pending = []
        for name, value in values.items():
            getattr(self, name).copy_(value)

    def _drop_nonfinite(self, what: str, *xs: Tensor) -> tuple[Tensor, ...] | None:
        """``xs`` (sharing their first dimension) without the rows where any is non-finite, each dropped row counted
        (or an error, as :attr:`nonfinite` says); None when no row is left."""
        if all(all_finite(x) for x in xs):
            return xs
        finite = torch.ones(xs[0].shape[0], dtype=torch.bool)
        for x in xs:
            finite &= torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1).cpu()
        if bool(finite.all()):
            return xs
        bad = int((~finite).sum())
        self._finite_or_reject(what, *xs)
        self.num_nonfinite += bad - 1
        kept = tuple(x[finite.to(x.device)] for x in xs)
        return kept if kept[0].shape[0] > 0 else None

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


def precision_mean_se(s_w: float, s_fw: float, s_f: float, s_wx: float, s_wx2: float) -> tuple[float, float]:
    """Precision-weighted mean of per-step estimates ``x_s`` with ``Var x_s = c / omega_s`` (``c`` unknown) and its
    standard error (docs/theory.md §7.10).

    Step ``s`` enters with forgetting ``f_s`` and weight ``w_s = f_s omega_s``. From ``sum w``, ``sum f w``
    (``sum f^2 omega``, a square-decaying sum), ``sum f``, ``sum w x`` and ``sum w x^2``:
    ``E[sum w x^2 - (sum w x)^2 / sum w] = c (sum f - sum f w / sum w)`` gives ``c``, and
    ``se^2 = c sum f w / (sum w)^2``. With equal ``omega`` this is :func:`reliability_mean_se`.
    ``(nan, inf)`` before the first step; ``se = inf`` until two steps are seen.
    """
    import math

    if s_w <= 0:
        return math.nan, math.inf
    mean = s_wx / s_w
    den = s_f - s_fw / s_w
    if den <= 1e-12 * s_f:
        return mean, math.inf
    c = max(s_wx2 - s_wx * s_wx / s_w, 0.0) / den
    return mean, math.sqrt(c * s_fw) / s_w


def reliability_mean_se(s_w: float, s_w2: float, s_wx: float, s_wx2: float) -> tuple[float, float]:
    """Weighted mean of per-step estimates ``x_s`` with weights ``w_s`` and its standard error.

    From the sums ``sum w``, ``sum w^2``, ``sum w x`` and ``sum w x^2`` (forgetting folded into the weights):
    the unbiased reliability-weighted variance ``V = (sum w x^2 - (sum w x)^2 / sum w) / (sum w - sum w^2 / sum w)``
    of one step's estimate, and ``se^2 = V sum w^2 / (sum w)^2``: :func:`precision_mean_se` with every weight a
    forgetting (``omega = 1``). ``(nan, inf)`` before the first step; ``se = inf`` until two steps with weight are seen.
    """
    return precision_mean_se(s_w, s_w2, s_w, s_wx, s_wx2)
