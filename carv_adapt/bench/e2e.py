"""End to end at equal compute: a baseline run and an adaptive run given the baseline's measured compute,
over several seeds, compared by the workload's quality metric (SPEC §10).

SDS and distribution-matching distillation optimise objectives that are defined only through their
gradients (a KL between diffused distributions), so there is no scalar objective to read off; the quality
metric (classifier probability of the target digit on rendered views; Frechet distance of decoded samples
in a digits feature space) is what the two runs are compared by.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from carv_adapt.adapters import build_adapter
from carv_adapt.demo import equal_compute_runs

__all__ = ["E2ESettings", "equal_compute"]


@dataclass(frozen=True)
class E2ESettings:
    steps: int
    seeds: tuple[int, ...] = (0, 1, 2)
    quick: bool = False


def equal_compute(workload: str, s: E2ESettings, progress: Any = None) -> dict[str, Any]:
    """Per seed: baseline for ``s.steps`` steps, then the adaptive controller until the baseline's measured
    compute is spent; both runs' quality and compute. Returns a JSON-ready dict."""
    rows = []
    for seed in s.seeds:
        if progress is not None:
            progress(f"{workload}: equal-compute runs, seed {seed}")
        a = build_adapter(workload, seed, s.quick)
        t0 = time.perf_counter()
        base, adapt, ctrl = equal_compute_runs(a, s.steps, seed)
        wall = time.perf_counter() - t0
        rows.append(
            {
                "seed": seed,
                "baseline_steps": len(base.records),
                "baseline_compute_s": base.compute_seconds,
                "baseline_quality": a.quality(base),
                "adaptive_steps": len(adapt.records),
                "adaptive_compute_s": adapt.compute_seconds,
                "adaptive_quality": a.quality(adapt),
                "adaptive_final_K": adapt.records[-1].K,
                "adaptive_predicted_ecm": ctrl.estimated_ecm,
                "wall_s": wall,
            }
        )
    return {"workload": workload, "quality_metric": a.quality_name, "steps": s.steps, "seeds": rows}
