"""End to end at equal compute: a baseline run and an adaptive run given the baseline's measured compute,
over several seeds, compared by the workload's quality metric (docs/theory.md §10, §13).

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
from carv_adapt.demo import demo_controller, equal_compute_runs

__all__ = ["E2ESettings", "equal_compute"]


@dataclass(frozen=True)
class E2ESettings:
    steps: int
    seeds: tuple[int, ...] = (0, 1, 2)
    quick: bool = False
    progress_arm: bool = True  # also run the controller with objective="progress" at the same compute
    teacher: str | None = None  # sds3d: a shipped teacher's name or a diffusers folder (teachers.load)


def equal_compute(workload: str, s: E2ESettings, progress: Any = None) -> dict[str, Any]:
    """Per seed: baseline for ``s.steps`` steps, then the adaptive controller until the baseline's measured
    compute is spent; both runs' quality and compute. Returns a JSON-ready dict."""
    rows = []
    for seed in s.seeds:
        if progress is not None:
            progress(f"{workload}: equal-compute runs, seed {seed}")
        a = build_adapter(workload, seed, s.quick, teacher=s.teacher if workload == "sds3d" else None)
        t0 = time.perf_counter()
        base, adapt, ctrl = equal_compute_runs(a, s.steps, seed)
        wall = time.perf_counter() - t0
        row: dict[str, Any] = {}
        if s.progress_arm:
            # Same budget, same seed: the progress objective's run (docs/theory.md §13).
            prog_ctrl = demo_controller(a, s.steps, seed, objective="progress")
            prog = a.run(s.steps * 8, controller=prog_ctrl, compute_budget=base.compute_seconds)
            row = {
                "progress_steps": len(prog.records),
                "progress_compute_s": prog.compute_seconds,
                "progress_quality": a.quality(prog),
                "progress_final_K": prog.records[-1].K,
            }
        rows.append(
            {
                **row,
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
