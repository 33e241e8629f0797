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

__all__ = ["StepVariance", "PolicySegment", "SegmentEstimate", "pooled_between", "OVERLAP_INFLATION"]

# Successive second differences overlap: for any noise covariance the squared norms of d_t and d_{t+1} correlate
# with rho^2 = (4/6)^2, of d_t and d_{t+2} with (1/6)^2, so the variance of their mean is 1 + 2 (16 + 1)/36 times
# that of independent ones (docs/theory.md §7.8).
OVERLAP_INFLATION = 1.0 + 2.0 * (16.0 + 1.0) / 36.0


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
        key = (self.N, self.K, self.design, self.proposal_kind)
        return (
            other is not None
            and key == (other.N, other.K, other.design, other.proposal_kind)
            and self.probs.shape == other.probs.shape
            and bool(torch.equal(self.probs, other.probs))
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
    error (overlap included) and the effective number of second differences ``dof``."""

    policy: PolicySegment
    vg: float
    vg_se: float
    dof: float

    def to_dict(self) -> dict:
        return {"policy": self.policy.to_dict(), "vg": self.vg, "vg_se": self.vg_se, "dof": self.dof}

    @classmethod
    def from_dict(cls, d: dict) -> SegmentEstimate:
        return cls(PolicySegment.from_dict(d["policy"]), float(d["vg"]), float(d["vg_se"]), float(d["dof"]))


class StepVariance(SumStatistic):
    """Accumulates ``N ||g_t - 2 g_{t-1} + g_{t-2}||^2 / 6`` over steps whose three gradients were drawn under one
    policy, per policy, under forgetting (docs/theory.md §7.8).

    ``g_t`` is a step's gradient of the estimate: the mean over its ``N`` outer draws of each draw's weighted inner
    mean, mapped to parameters, nothing else added. Successive steps draw independently, so the second difference
    has variance ``6 V_g / N`` plus the second difference of the mean gradient, which a linear drift leaves at zero.
    A change of policy starts a new segment; up to ``slots`` of them are kept (the one with the least weight gives
    way), each carrying its policy, so a decision subtracts each segment's own within share. The last two
    gradients of the current segment are part of the state (``2 P`` numbers).
    """

    def __init__(self, nonfinite: NonFinitePolicy = "skip", slots: int = 8) -> None:
        super().__init__(nonfinite)
        for name in ("w", "wx", "wx2"):
            self.add_state(name, torch.zeros(slots))
        self.add_state("w2", torch.zeros(slots), decay="square")
        self._policies: list[PolicySegment | None] = [None] * slots
        self._current: int | None = None
        self._last: list[Tensor] = []  # the current segment's last two raw gradients, oldest first

    def _open(self, policy: PolicySegment) -> None:
        self._last = []
        for i, p in enumerate(self._policies):
            if policy.same(p):  # back to a policy already measured: its sums still hold
                self._current = i
                return
        i = int(torch.argmin(self.w))
        for name in ("w", "wx", "wx2", "w2"):
            getattr(self, name)[i] = 0.0
        self._policies[i], self._current = policy, i

    def update(
        self, grad: Tensor | Sequence[Tensor], policy: PolicySegment, metric: Preconditioner | None = None
    ) -> None:
        """Take one step's gradient (a flat Tensor or the per-parameter gradients, in a fixed order) drawn under
        ``policy``; with a ``metric`` (docs/theory.md §13.3) the difference is taken in it, and a step before the
        optimizer has second moments is skipped."""
        scale = None if metric is None else metric.scale()
        if metric is not None and scale is None:
            self._last = []
            return
        g = (grad if isinstance(grad, Tensor) else torch.cat([x.reshape(-1) for x in grad])).detach().reshape(-1)
        if self._current is None or not policy.same(self._policies[self._current]):
            self._open(policy)
        if self._last and self._last[-1].shape != g.shape:
            raise ShapeError(f"step gradient has {g.numel()} entries, the previous one {self._last[-1].numel()}")
        if not self._finite_or_reject("step gradient", g):
            self._last = []  # a broken triple: start over
            return
        if len(self._last) == 2:
            d = g - 2.0 * self._last[1] + self._last[0]
            if scale is not None:
                d = d * scale.to(d.device, d.dtype)
            x = policy.N * float(d.double().pow(2).sum()) / 6.0
            i = self._current
            assert i is not None
            for name, v in (("w", 1.0), ("w2", 1.0), ("wx", x), ("wx2", x * x)):
                getattr(self, name)[i] += v
        self._last = [*self._last[-1:], g.clone()]

    def compute(self) -> tuple[SegmentEstimate, ...]:
        """Each kept segment with at least one second difference, the current one last."""
        out = []
        order = [i for i in range(len(self._policies)) if i != self._current] + [self._current]
        w, w2, wx, wx2 = (getattr(self, n).tolist() for n in ("w", "w2", "wx", "wx2"))
        for i in order:
            p = None if i is None else self._policies[i]
            if p is None or w[i] <= 0:
                continue
            mean, se = reliability_mean_se(w[i], w2[i], wx[i], wx2[i])
            dof = w[i] / OVERLAP_INFLATION  # forgetting-weighted, like the probes' sum of N - 1
            out.append(SegmentEstimate(p, mean, se * math.sqrt(OVERLAP_INFLATION), dof))
        return tuple(out)

    def reset(self) -> None:
        super().reset()
        self._policies, self._current, self._last = [None] * len(self._policies), None, []

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["policies"] = [None if p is None else p.to_dict() for p in self._policies]
        out["current"] = self._current
        out["last"] = [g.cpu().clone() for g in self._last]
        return out

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        policies, current, last = state.pop("policies"), state.pop("current"), state.pop("last")
        super().load_state_dict(state)
        self._policies = [None if p is None else PolicySegment.from_dict(p) for p in policies]
        self._current = None if current is None else int(current)
        self._last = [torch.as_tensor(g).clone() for g in last]


def pooled_between(
    probe: tuple[float, float, float],
    segments: Sequence[SegmentEstimate],
    within_share: Callable[[PolicySegment], float],
    within_rel_se: float,
) -> tuple[float, float, float]:
    """``(sigma_B^2, se, dof)`` pooled from the probes' ``(sigma_B^2, se, dof)`` and the step segments, each
    segment giving ``vg - within_share(policy)`` (docs/theory.md §7.8).

    Estimates are weighted by their degrees of freedom, not by their estimated variances: a handful of probes
    gives a standard error too noisy to weight by. The segments' within shares share one relative error
    ``within_rel_se`` (they come from the same probes). Without usable segments the probes' estimate returns.
    """
    terms = []
    for s in segments:
        v = within_share(s.policy)
        if math.isfinite(v) and math.isfinite(s.vg) and s.dof > 0:
            terms.append((s.dof, s.vg - v, s.vg_se, v))
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
