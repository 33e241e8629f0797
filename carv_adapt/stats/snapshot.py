"""The reduced statistics a decision reads (docs/theory.md §12): one frozen value, plain data on request."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from carv_adapt.stats.calibration import ProfileCalibration
from carv_adapt.stats.costs import CostEstimate, CostTracker
from carv_adapt.stats.grouped import BetweenWithin, GroupedVariance
from carv_adapt.stats.profile import TimestepProfile
from carv_adapt.stats.steps import SegmentEstimate, StepVariance

__all__ = ["Statistics", "set_references"]


@dataclass(frozen=True)
class Statistics:
    """What :func:`~carv_adapt.decide.decide` decides from.

    Attributes:
        pi_b: ``B``-dim target mass per bin. m: ``B``-dim per-bin mean of ``||f||^2`` (proxy space, rho-free).
        m_se: ``B``-dim standard errors of ``m`` (``inf`` where unmeasured). counts: ``B``-dim forgetting counts.
        proxy: output-space between/within. param: parameter-space (split-half probe) ones, or None.
        costs: fitted ``c_0``, ``c_out``, ``c_in`` (and the measurement time per step, outside the model).
        steps: per-policy group-mean variances from the step gradients (docs/theory.md §7.8), current policy last.
        ratio, ratio_se, ratio_counts: ``B``-dim parameter- over output-space squared-norm ratios of the same draws,
            their standard errors and forgetting counts (docs/theory.md §7.9), or None without per-draw probes.
    """

    pi_b: Tensor
    m: Tensor
    m_se: Tensor
    counts: Tensor
    proxy: BetweenWithin
    param: BetweenWithin | None
    costs: CostEstimate
    steps: tuple[SegmentEstimate, ...] = ()
    ratio: Tensor | None = None
    ratio_se: Tensor | None = None
    ratio_counts: Tensor | None = None

    @classmethod
    def reduce(
        cls,
        pi_b: Tensor,
        profile: TimestepProfile,
        grouped: GroupedVariance,
        param_grouped: GroupedVariance,
        costs: CostTracker,
        steps: StepVariance | None = None,
        calibration: ProfileCalibration | None = None,
    ) -> Statistics:
        proxy = grouped.compute()
        ratio = calibration.compute() if calibration is not None and calibration.observed else None
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
            ratio=None if ratio is None else ratio[0],
            ratio_se=None if ratio is None else ratio[1],
            ratio_counts=None if ratio is None else calibration.folded().count.clone(),  # type: ignore[union-attr]
        )

    def param_profile(self) -> tuple[Tensor, Tensor] | None:
        """``(m, se)`` in the parameter space, or None without pairs (docs/theory.md §7.9): the output-space profile
        times a smooth ratio, ``log r`` quadratic in the bin's position fitted to the bins' ratios weighted by
        their pair counts (a bin's own ratio rests on a few heavy-tailed pairs); the fit's standard error joins
        the profile's."""
        if self.ratio is None or self.ratio_counts is None:
            return None
        r, n = self.ratio.double(), self.ratio_counts.double()
        ok = torch.isfinite(r) & (r > 0) & (n > 0)
        k = int(ok.sum())
        if k == 0:
            return None
        B = r.numel()
        u = (torch.arange(B, dtype=torch.float64) + 0.5) / B - 0.5
        X = torch.stack([u**d for d in range(min(3, max(k - 1, 1)))], dim=1)  # one residual degree of freedom kept
        w = n[ok]
        Xo, yo = X[ok], torch.log(r[ok])
        info = Xo.T @ (w[:, None] * Xo)
        beta = torch.linalg.lstsq(info, Xo.T @ (w * yo)).solution
        dof = k - X.shape[1]
        # Residual scale per unit weight; a single bin has none, and its own standard error stands in.
        s2 = (
            float((w * (yo - Xo @ beta) ** 2).sum()) / dof
            if dof > 0
            else float(n[ok].sum())
            * float(
                (self.ratio_se[ok] / r[ok]).pow(2).sum()  # type: ignore[index]
            )
        )
        var_log = s2 * ((X @ torch.linalg.pinv(info)) * X).sum(dim=1)
        fit = torch.exp(X @ beta)
        m = self.m.double()
        rel_m = self.m_se.double() / m.abs().clamp_min(1e-300)
        return m * fit, (m * fit).abs() * torch.sqrt(rel_m**2 + var_log.clamp_min(0))

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
            **{
                k: None if getattr(self, k) is None else getattr(self, k).tolist()
                for k in ("ratio", "ratio_se", "ratio_counts")
            },
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
            **{k: None if d.get(k) is None else vec(d[k]) for k in ("ratio", "ratio_se", "ratio_counts")},  # §7.9
        )

    @property
    def identified(self) -> bool:
        """Whether between and within are both estimated in the proxy space."""
        return math.isfinite(self.proxy.sigma_b2) and math.isfinite(self.proxy.sigma_w2)


def set_references(proxy: GroupedVariance, param: GroupedVariance, stats: Statistics, decision: Any) -> None:
    """Give the between trackers the precision reference of the steps to come (docs/theory.md §7.10): the tracker
    of the decision's space gets its ``sigma_B^2`` and the chosen policy's predicted within variance, the other its
    own pooled estimates. Every rank decides on the same reduced statistics, so every rank sets the same."""
    own = proxy if decision.space == "proxy" else param
    for g, bw in ((proxy, stats.proxy), (param, stats.param)):
        design = None if bw is None else bw.sigma_b2_design  # an outer design's between estimates: its own pool
        # The reference's errors, for the scale test: relative ones for the decision's predicted within variance.
        se = None if bw is None else (bw.sigma_b2_se, bw.sigma_w2_se, bw.sigma_b2_design_se)
        if g is own and math.isfinite(decision.predicted_sigma_w2):
            r_w = bw.sigma_w2_se / bw.sigma_w2 if bw is not None and bw.sigma_w2 > 0 else math.inf
            se = None if se is None else (decision.sigma_b2_se, r_w * decision.predicted_sigma_w2, se[2])
            g.set_reference(decision.sigma_b2, decision.predicted_sigma_w2, design, se)
        elif bw is not None:
            g.set_reference(bw.sigma_b2, bw.sigma_w2, design, se)
