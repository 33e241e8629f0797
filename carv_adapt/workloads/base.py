"""Shared result values of the workloads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["StepRecord", "RunResult"]


@dataclass(frozen=True)
class StepRecord:
    """What one training step did and cost."""

    step: int
    N: int
    K: int
    seconds: dict[str, float]
    grad_norm: float
    score: float | None = None


@dataclass
class RunResult:
    """A workload run: per-step records, the controller's refits, and the final parameters."""

    records: list[StepRecord]
    history: list[Any]
    final_state: dict[str, Tensor]
    compute_seconds: float
    scores: list[tuple[int, float]] = field(default_factory=list)
    controller_state: dict[str, Any] | None = None

    def stage_means(self) -> dict[str, float]:
        """Mean seconds per outer draw (outer stages) and per inner draw (teacher) over the run."""
        n = sum(r.N for r in self.records)
        nk = sum(r.N * r.K for r in self.records)
        tot: dict[str, float] = {}
        for r in self.records:
            for k, v in r.seconds.items():
                tot[k] = tot.get(k, 0.0) + v
        return {k: v / (nk if k == "teacher" else n) for k, v in tot.items()}
