"""The reduced statistics a decision reads (docs/theory.md §12): one frozen value, plain data on request."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from carv_adapt.stats.costs import CostEstimate, CostTracker
from carv_adapt.stats.grouped import BetweenWithin, GroupedVariance
from carv_adapt.stats.profile import TimestepProfile
from carv_adapt.stats.steps import SegmentEstimate, StepVariance

__all__ = ["Statistics"]


@dataclass(frozen=True)
class Statistics:
    """What :func:`~carv_adapt.decide.decide` decides from.

    Attributes:
        pi_b: ``B``-dim target mass per bin. m: ``B``-dim per-bin mean of ``||f||^2`` (proxy space, rho-free).
        m_se: ``B``-dim standard errors of ``m`` (``inf`` where unmeasured). counts: ``B``-dim forgetting counts.
        proxy: output-space between/within. param: parameter-space (split-half probe) ones, or None.
        costs: fitted ``c_0``, ``c_out``, ``c_in`` (and the measurement time per step, outside the model).
        steps: per-policy group-mean variances from the step gradients (docs/theory.md §7.8), current policy last.
    """

    pi_b: Tensor
    m: Tensor
    m_se: Tensor
    counts: Tensor
    proxy: BetweenWithin
    param: BetweenWithin | None
    costs: CostEstimate
    steps: tuple[SegmentEstimate, ...] = ()

    @classmethod
    def reduce(
        cls,
        pi_b: Tensor,
        profile: TimestepProfile,
        grouped: GroupedVariance,
        param_grouped: GroupedVariance,
        costs: CostTracker,
        steps: StepVariance | None = None,
    ) -> Statistics:
        proxy = grouped.compute()
        param = param_grouped.compute(phi=proxy.phi) if float(param_grouped.groups) > 0 else None
        return cls(
            pi_b=pi_b.double(),
            m=profile.compute(),
            m_se=profile.standard_error(),
            counts=profile.folded().count.clone(),
            proxy=proxy,
            param=param,
            costs=costs.compute(),
            steps=() if steps is None else steps.compute(),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists and floats; non-finite floats kept as floats: the JSON log writer encodes them)."""
        return {
            "pi_b": self.pi_b.tolist(),
            "m": self.m.tolist(),
            "m_se": self.m_se.tolist(),
            "counts": self.counts.tolist(),
            "proxy": asdict(self.proxy),
            "param": None if self.param is None else asdict(self.param),
            "costs": asdict(self.costs),
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Statistics:
        def floats(x: dict[str, Any]) -> dict[str, float]:
            return {k: float(v) for k, v in x.items()}

        def vec(x: list[Any]) -> Tensor:
            return torch.tensor([float(v) for v in x], dtype=torch.float64)

        return cls(
            pi_b=vec(d["pi_b"]),
            m=vec(d["m"]),
            m_se=vec(d["m_se"]),
            counts=vec(d["counts"]),
            proxy=BetweenWithin(**floats(d["proxy"])),
            param=None if d.get("param") is None else BetweenWithin(**floats(d["param"])),
            costs=CostEstimate(**floats(d["costs"])),
            steps=tuple(SegmentEstimate.from_dict(s) for s in d.get("steps", ())),  # logs before §7.8 have none
        )

    @property
    def identified(self) -> bool:
        """Whether between and within are both estimated in the proxy space."""
        return math.isfinite(self.proxy.sigma_b2) and math.isfinite(self.proxy.sigma_w2)
