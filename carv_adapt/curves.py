"""Quality-against-compute curves of a run and the compute each run needs to reach the baseline's quality
(docs/theory.md §10, §13): what ``carv-adapt demo`` reports beside the variance."""

from __future__ import annotations

import math
from typing import Any

from carv_adapt.workloads.base import ComputeRun

__all__ = ["quality_curve", "compute_to_baseline_quality"]


def _finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing or not finite (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None


def quality_curve(run: ComputeRun, budget: float, measured: bool) -> list[dict[str, Any]]:
    """A run's checkpoints on the demo's clock: compute and its fraction of the baseline's budget, quality."""
    rows = []
    for c in run.checkpoints:
        x = c.seconds if measured else c.compute
        rows.append(
            {
                "fraction": c.fraction,
                "step": c.step,
                "compute": x,
                "compute_fraction": x / budget if budget > 0 else math.nan,
                "seconds": c.seconds,
                "quality": _finite(c.scores.get("quality")),
            }
        )
    return rows


def compute_to_baseline_quality(
    curves: dict[str, list[dict[str, Any]]], levels: tuple[float, ...], higher_is_better: bool = True
) -> list[dict[str, Any]]:
    """Time to quality of each run (docs/theory.md §10): for each level ``f``, the baseline's quality at ``f`` of its
    budget (its best at a checkpoint within ``f`` of it: the monotone envelope) and the compute, as a fraction of the
    baseline's budget, at which each run's envelope reaches it, interpolated linearly between checkpoints
    (:func:`~carv_adapt.bench.ttq_analysis.compute_to_reach`); None when a run never reaches it. Checkpoints without
    a finite quality are left out. ``speedup`` is the baseline's compute over the adaptive run's.

    ``curves`` maps run names (``"baseline"`` first) to rows with ``compute_fraction`` (non-decreasing) and
    ``quality``."""
    from carv_adapt.bench.ttq_analysis import compute_to_reach, envelope

    def finite(curve: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for p in curve if p["quality"] is not None and math.isfinite(p["quality"])]

    base = finite(curves["baseline"])
    rows = []
    for f in levels:
        upto = [p["quality"] for p in base if p["compute_fraction"] <= f + 1e-12]
        target = float(envelope(upto, higher_is_better)[-1]) if upto else None
        row: dict[str, Any] = {"fraction": f, "baseline_quality": target}
        for name, curve in curves.items():
            pts = finite(curve)
            need = math.nan
            if target is not None and pts:
                x, q = [p["compute_fraction"] for p in pts], [p["quality"] for p in pts]
                need = compute_to_reach(x, q, target, higher_is_better)
            row[name] = _finite(need)
        b, ad = row.get("baseline"), row.get("adaptive")
        row["speedup"] = b / ad if b is not None and ad else None
        rows.append(row)
    return rows
