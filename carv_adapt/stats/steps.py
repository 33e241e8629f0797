"""The between variance from every step's gradient (docs/theory.md §7.8): second differences of successive step
gradients under one policy measure the variance of a group mean, which the probes then split into between and
within."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from carv_adapt.errors import ShapeError
from carv_adapt.metric import Preconditioner
from carv_adapt.stats.base import NonFinitePolicy, SumStatistic, reliability_mean_se

__all__ = [
    "StepVariance",
    "PolicySegment",
    "SegmentEstimate",
    "pooled_between",
    "overlap_inflation",
    "OVERLAP_INFLATION",
]

LAG1, LAG2 = (1.0, -2.0, 1.0), (1.0, 0.0, -2.0, 0.0, 1.0)  # g_t - 2 g_{t-1} + g_{t-2};  g_t - 2 g_{t-2} + g_{t-4}


def overlap_inflation(plus: Sequence[float], minus: Sequence[float] = ()) -> float:
    """How much more variable the mean of overlapping ``||plus * g||^2 - ||minus * g||^2`` (kernels over successive
    independent steps) is than a mean of as many independent ones: ``1 + 2 sum_k rho_k``. For Gaussian noise of any
    covariance the squared norms of two kernels' outputs covary as the squared inner product of the kernels
    (docs/theory.md §7.8), so this is exact and depends on the kernels alone."""

    def c(p: Sequence[float], q: Sequence[float], k: int) -> float:  # sum_j p_j q_{j-k}: q shifted k steps back
        return sum(p[j] * q[j - k] for j in range(len(p)) if 0 <= j - k < len(q))

    def gamma(k: int) -> float:
        return c(plus, plus, k) ** 2 + c(minus, minus, k) ** 2 - c(plus, minus, k) ** 2 - c(minus, plus, k) ** 2

    span = max(len(plus), len(minus))
    return 1.0 + 2.0 * sum(gamma(k) for k in range(1, span)) / gamma(0)


OVERLAP_INFLATION = overlap_inflation(LAG1)  # 1 + 2 (16 + 1)/36 = 1.94
_DRIFT_INFLATION = overlap_inflation(LAG2, LAG1)
_SUMS = ("w", "wx", "wx2", "u", "uy", "uy2")  # lag-1 estimates x; lag-2 less lag-1, y (the drift check)
_SQUARES = ("w2", "u2")  # their squared weights
_SLOT_STATES = (*_SUMS, *_SQUARES)


@dataclass(frozen=True)
class PolicySegment:
    """The policy a run of steps drew under: ``N`` outer draws of ``K`` inner ones, the inner ``design``, and the
    ``B``-dim bin proposal ``probs`` of ``proposal_kind``."""

    N: int
    K: int
    design: str
    proposal_kind: str
    probs: Tensor

    def same(self, other: PolicySegment | None) -> bool:
        if other is self:
            return True
        key = (self.N, self.K, self.design, self.proposal_kind)
        return (
            other is not None
            and key == (other.N, other.K, other.design, other.proposal_kind)
            and (
                self.probs is other.probs
                or (self.probs.shape == other.probs.shape and torch.equal(self.probs, other.probs))
            )
        )

    def to_dict(self) -> dict:
        return {"N": self.N, "K": self.K, "design": self.design, "proposal_kind": self.proposal_kind,
                "probs": self.probs.tolist()}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> PolicySegment:
        probs = torch.as_tensor(d["probs"], dtype=torch.float64).clone()
        return cls(int(d["N"]), int(d["K"]), str(d["design"]), str(d["proposal_kind"]), probs)


@dataclass(frozen=True)
class SegmentEstimate:
    """One policy's group-mean variance ``V_g = sigma_B^2 + v(K, p)`` from its steps: the mean ``vg``, its standard
    error (overlap included), the effective number of second differences ``dof``, and ``drift``, an upper bound on
    the mean gradient's drift in ``vg`` beyond noise (NaN until the segment has five steps)."""

    policy: PolicySegment
    vg: float
    vg_se: float
    dof: float
    drift: float = 0.0

    def to_dict(self) -> dict:
        return {"policy": self.policy.to_dict(), "vg": self.vg, "vg_se": self.vg_se, "dof": self.dof,
                "drift": self.drift}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> SegmentEstimate:
        vals = (float(d[k]) for k in ("vg", "vg_se", "dof", "drift"))
        return cls(PolicySegment.from_dict(d["policy"]), *vals)


class StepVariance(SumStatistic):
    """Accumulates ``x_t = N ||g_t - 2 g_{t-1} + g_{t-2}||^2 / 6`` over steps whose gradients were drawn under one
    policy, per policy, under forgetting, and a drift check (docs/theory.md §7.8).

    ``g_t`` is a step's gradient of the estimate: the mean over its ``N`` outer draws of each draw's weighted inner
    mean, mapped to parameters, nothing else added. Successive steps draw independently, so ``x_t`` estimates the
    group-mean variance ``V_g`` plus ``N ||second difference of the mean gradient||^2 / 6``, which a linear drift
    leaves at zero. The same at lag two, ``x2_t`` from ``g_t - 2 g_{t-2} + g_{t-4}``, carries at least twice the
    lag-one drift term for any drift as smooth as a random walk, so ``y_t = x2_t - x_t`` bounds it. A change of
    policy starts a new segment; up to ``slots`` are kept (the least weighted gives way), each with its policy, so
    a decision subtracts each segment's own within share. The current segment's last four gradients are part of
    the state (``4 P`` numbers).
    """

    def __init__(self, nonfinite: NonFinitePolicy = "skip", slots: int = 8) -> None:
        super().__init__(nonfinite)
        for name in _SUMS:
            self.add_state(name, torch.zeros(slots))
        for name in _SQUARES:
            self.add_state(name, torch.zeros(slots), decay="square")
        self._policies: list[PolicySegment | None] = [None] * slots
        self._current: int | None = None
        # The current segment's stream: its last gradient, up to four first differences e_t = g_t - g_{t-1} in the
        # rows of one buffer (``_order``: their rows, oldest first) and their inner products (``_gram``, by row).
        self._prev: Tensor | None = None
        self._diffs: Tensor | None = None
        self._order: list[int] = []
        self._gram = _zero_gram()

    def _restart(self) -> None:
        """Start the stream over (a new segment, or a broken run of steps); the buffer is kept for reuse."""
        self._prev, self._order = None, []

    def _open(self, policy: PolicySegment) -> None:
        self._restart()
        for i, p in enumerate(self._policies):
            if policy.same(p):  # back to a policy already measured: its sums still hold
                self._current = i
                return
        i = int(torch.argmin(self.w))
        for name in _SLOT_STATES:
            getattr(self, name)[i] = 0.0
        self._policies[i], self._current = policy, i

    def update(
        self, grad: Tensor | Sequence[Tensor], policy: PolicySegment, metric: Preconditioner | None = None
    ) -> None:
        """Take one step's gradient (a flat Tensor or the per-parameter gradients, in a fixed order) drawn under
        ``policy``; with a ``metric`` (docs/theory.md §13.3) differences are taken in it, and a step before the
        optimizer has second moments is skipped."""
        scale = None if metric is None else metric.scale()
        if metric is not None and scale is None:
            self._restart()
            return
        g = grad.detach().reshape(-1) if isinstance(grad, Tensor) else torch.cat([x.detach().reshape(-1) for x in grad])
        if self._current is None or not policy.same(self._policies[self._current]):
            self._open(policy)
        prev = self._prev
        if prev is not None and prev.shape != g.shape:
            raise ShapeError(f"step gradient has {g.numel()} entries, the previous one {prev.numel()}")
        if prev is None:
            if self._finite_or_reject("step gradient", g):
                self._prev = g.clone() if isinstance(grad, Tensor) else g  # p.grad changes under the next backward
            return
        # Second differences from first ones: d1 = e_t - e_{t-1}, d2 = e_t + e_{t-1} - e_{t-2} - e_{t-3}. One pass
        # writes e_t, one matrix-vector product gives its inner products with the held ones; the held ones' products
        # are kept, so a step reads each P-sized vector about once (half precision is widened).
        wide = torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else g.dtype
        if self._diffs is None or self._diffs.shape[1] != g.numel() or self._diffs.dtype != wide:
            self._diffs, self._order = torch.zeros(4, g.numel(), dtype=wide, device=g.device), []
        row = self._order[0] if len(self._order) == 4 else min(set(range(4)) - set(self._order))
        e = self._diffs[row]
        torch.sub(g.to(wide), prev.to(wide), out=e)
        order = [*self._order[-3:], row]
        # The 4 x 4 products live in Python lists: a step's few scalars cost the interpreter, not a library call
        # (after the workload's compute each NumPy or torch call starts cold, tens of microseconds on a CPU).
        if scale is None:
            prods = (self._diffs @ e).tolist()
            G = self._gram
            for j, v in enumerate(prods):
                G[row][j] = G[j][row] = v
        else:  # the metric changes every step: all products in the current one
            w = self._diffs[order] * scale.to(e.device, wide)
            G = _zero_gram()
            for a, v in zip(order, (w @ w.T).tolist()):
                for b, x in zip(order, v):
                    G[a][b] = x
        if not all(math.isfinite(G[i][j]) for i in order for j in order):
            # The held differences are finite, so a non-finite product means a non-finite (or overflowing) g.
            self._finite_or_reject("step gradient", g)
            self._restart()
            return
        self._order = order
        if isinstance(grad, Tensor):
            self._prev = prev.copy_(g)  # the previous gradient's storage: p.grad changes under the next backward
        else:
            self._prev = g  # a concatenation is already a copy
        if len(order) < 2:
            return
        coef = [(1.0, order[-1]), (-1.0, order[-2])]
        xs = [_quad(G, coef)]
        if len(order) == 4:
            xs.append(_quad(G, [(1.0, order[-1]), (1.0, order[-2]), (-1.0, order[-3]), (-1.0, order[-4])]))
        xs = [policy.N / 6.0 * x for x in xs]
        names, values = ["w", "w2", "wx", "wx2"], [1.0, 1.0, xs[0], xs[0] ** 2]
        if len(xs) == 2:
            y = xs[1] - xs[0]
            names += ["u", "u2", "uy", "uy2"]
            values += [1.0, 1.0, y, y * y]
        i = self._current
        assert i is not None
        arr, layout = self._arr, self._layout
        for n, v in zip(names, values):
            arr[layout[n][0] + i] += v

    def compute(self, z: float = 2.0) -> tuple[SegmentEstimate, ...]:
        """Each kept segment with at least one lag-one estimate, the current one last. ``drift`` is the lag-two
        check's excess beyond ``z`` standard errors (0 when within noise, NaN before the segment has one)."""
        out = []
        order = [i for i in range(len(self._policies)) if i != self._current] + [self._current]
        sums = {n: getattr(self, n).tolist() for n in _SLOT_STATES}
        for i in order:
            p = None if i is None else self._policies[i]
            if p is None or sums["w"][i] <= 0:
                continue
            mean, se = reliability_mean_se(sums["w"][i], sums["w2"][i], sums["wx"][i], sums["wx2"][i])
            y, se_y = reliability_mean_se(sums["u"][i], sums["u2"][i], sums["uy"][i], sums["uy2"][i])
            drift = max(y - z * se_y * math.sqrt(_DRIFT_INFLATION), 0.0) if math.isfinite(se_y) else math.nan
            dof = sums["w"][i] / OVERLAP_INFLATION  # forgetting-weighted, like the probes' sum of N - 1
            out.append(SegmentEstimate(p, mean, se * math.sqrt(OVERLAP_INFLATION), dof, drift))
        return tuple(out)

    def reset(self) -> None:
        super().reset()
        self._policies, self._current = [None] * len(self._policies), None
        self._restart()

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["policies"] = [None if p is None else p.to_dict() for p in self._policies]
        out["current"] = self._current
        o = self._order
        out["prev"] = None if self._prev is None else self._prev.cpu().clone()
        out["diffs"] = [] if self._diffs is None else [self._diffs[r].cpu().clone() for r in o]  # oldest first
        gram = [[self._gram[i][j] for j in o] for i in o]
        out["gram"] = torch.tensor(gram, dtype=torch.float64).reshape(len(o), len(o))
        return out

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        policies, current, last = state.pop("policies"), state.pop("current"), state.pop("last", None)
        prev, diffs, gram = state.pop("prev", None), state.pop("diffs", []), state.pop("gram", None)
        super().load_state_dict(state)
        self._policies = [None if p is None else PolicySegment.from_dict(p) for p in policies]
        self._current = None if current is None else int(current)
        if last is not None:  # a checkpoint from before first differences: its last raw gradients, oldest first
            raw = [torch.as_tensor(g) for g in last]
            prev = raw[-1] if raw else None
            diffs = [b.float() - a.float() if b.dtype in (torch.float16, torch.bfloat16) else b - a
                     for a, b in zip(raw, raw[1:])]  # fmt: skip
        self._restart()
        self._prev = None if prev is None else torch.as_tensor(prev).clone()
        if diffs:
            d = torch.stack([torch.as_tensor(x) for x in diffs])
            self._diffs = torch.zeros(4, d.shape[1], dtype=d.dtype)
            self._diffs[: len(diffs)] = d
            self._order = list(range(len(diffs)))
            g = (d @ d.T).double() if gram is None else torch.as_tensor(gram, dtype=torch.float64)
            self._gram = _zero_gram()
            for i, v in enumerate(g.tolist()):
                self._gram[i][: len(v)] = v


def _zero_gram() -> list[list[float]]:
    return [[0.0] * 4 for _ in range(4)]


def _quad(G: list[list[float]], coef: Sequence[tuple[float, int]]) -> float:
    """``||sum_i c_i e_i||^2`` from the inner products ``G`` of the ``e_i`` (by row)."""
    return float(sum(a * b * G[i][j] for a, i in coef for b, j in coef))


def pooled_between(
    probe: tuple[float, float, float],
    segments: Sequence[SegmentEstimate],
    within_share: Callable[[PolicySegment], float],
    within_rel_se: float,
) -> tuple[float, float, float]:
    """``(sigma_B^2, se, dof)`` pooled from the probes' ``(sigma_B^2, se, dof)`` and the step segments, each
    segment giving ``vg - within_share(policy)`` (docs/theory.md §7.8).

    Estimates are weighted by their degrees of freedom, not by their estimated variances: a handful of probes
    gives a standard error too noisy to weight by. A segment whose drift check exceeds its noise counts as its
    bias bound ``drift`` allows: its degrees of freedom scale by ``se^2 / (se^2 + drift^2)`` and ``drift`` joins its
    standard error; segments not yet checked are left out. The segments' within shares share one relative error
    ``within_rel_se`` (they come from the same probes). Without usable segments the probes' estimate returns.
    """
    terms = []
    for s in segments:
        v = within_share(s.policy)
        if math.isfinite(v) and math.isfinite(s.vg) and math.isfinite(s.vg_se) and math.isfinite(s.drift):
            mse = s.vg_se**2 + s.drift**2
            dof = s.dof * (s.vg_se**2 / mse if mse > 0 else 1.0)
            if dof > 0:
                terms.append((dof, s.vg - v, math.sqrt(mse), v))
    if not terms:
        return probe
    dof_s = sum(t[0] for t in terms)
    sb_s = sum(t[0] * t[1] for t in terms) / dof_s
    v_mean = sum(t[0] * t[3] for t in terms) / dof_s
    var_s = sum((t[0] * t[2]) ** 2 for t in terms) / dof_s**2 + (v_mean * within_rel_se) ** 2
    se_s = math.sqrt(var_s) if math.isfinite(var_s) else math.inf
    sb_p, se_p, dof_p = probe
    if not (math.isfinite(sb_p) and math.isfinite(se_p) and dof_p > 0) or not math.isfinite(se_s):
        usable_steps = math.isfinite(se_s) or not math.isfinite(sb_p)
        return (sb_s, se_s, dof_s) if usable_steps else probe
    total = dof_p + dof_s
    sb = (dof_p * sb_p + dof_s * sb_s) / total
    se = math.sqrt((dof_p * se_p) ** 2 + (dof_s * se_s) ** 2) / total
    return sb, se, total
