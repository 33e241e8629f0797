"""``carv-adapt bench``: the ECM ablation on every shipped workload, equal-compute runs over seeds, the SDS-3D
cost sweep and the controller's scaling, written as JSON, markdown and figures (docs/theory.md §10)."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from carv_adapt.bench.ablation import VARIANTS, AblationSettings, ablate
from carv_adapt.bench.e2e import E2ESettings, equal_compute
from carv_adapt.bench.iddpm import LossSecondMomentResampler
from carv_adapt.bench.replicate import Replications, ecm_interval, replicate
from carv_adapt.bench.scaling import scaling_table
from carv_adapt.bench.sweep import SweepSettings, cost_sweep

__all__ = [
    "BenchSettings",
    "run_bench",
    "LossSecondMomentResampler",
    "Replications",
    "replicate",
    "ecm_interval",
    "VARIANTS",
]

# Training steps per workload (attribution: ten per round over its examples), and the equal-compute runs.
DEFAULT_STEPS = {"sds3d": 300, "distill": 150, "attribution": 60, "diffusion_head": 300}
QUICK_STEPS = {"sds3d": 24, "distill": 16, "attribution": 10, "diffusion_head": 16}


@dataclass(frozen=True)
class BenchSettings:
    """What ``carv-adapt bench`` runs. ``quick`` shrinks every size (a smoke test, not a measurement)."""

    workloads: tuple[str, ...] = ("sds3d", "distill", "attribution")
    seed: int = 0
    replications: int = 80
    e2e_seeds: tuple[int, ...] = (0, 1, 2)
    e2e_workloads: tuple[str, ...] = ("sds3d", "distill")
    sweep: bool = True
    scaling: bool = True
    quick: bool = False
    out: Path = Path("bench_report")
    steps: dict[str, int] = field(default_factory=dict)
    teacher: str | None = None  # replaces the sds3d teacher: a shipped name or a diffusers folder (teachers.load)

    def steps_for(self, workload: str) -> int:
        return self.steps.get(workload, (QUICK_STEPS if self.quick else DEFAULT_STEPS)[workload])

    def ablation(self, workload: str) -> AblationSettings:
        if self.quick:
            return AblationSettings(
                steps=self.steps_for(workload),
                seed=self.seed,
                replications=min(self.replications, 8),
                ratio_replications=1,
                pilot_outer=8,
                pilot_inner=6,
                cost_Ks=(1, 8),
                cost_reps=2,
                iddpm_history=1,
                k_max=16,
                quick=True,
                teacher=self.teacher,
            )
        return AblationSettings(
            steps=self.steps_for(workload), seed=self.seed, replications=self.replications, teacher=self.teacher
        )


def run_bench(s: BenchSettings, command: str = "carv-adapt bench", progress: Any = None) -> dict[str, Any]:
    """Run everything ``s`` asks for; writes ``bench.json``, ``bench.md`` and the figures to ``s.out``. It never
    touches the README: regenerating the README's benchmark blocks from a committed result is an explicit step,
    ``python -m carv_adapt.bench.report --readme README.md --bench docs/bench/bench.json``."""
    import matplotlib.pyplot as plt
    import torch

    from carv_adapt.bench import report

    t0 = time.perf_counter()
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": command,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "settings": {**{k: v for k, v in asdict(s).items() if k != "out"}, "out": str(s.out)},
        "ablation": [],
    }
    for w in s.workloads:
        result["ablation"].append(ablate(w, s.ablation(w), progress))
    if s.e2e_seeds:
        result["e2e"] = [
            equal_compute(w, E2ESettings(s.steps_for(w), s.e2e_seeds, s.quick, teacher=s.teacher), progress)
            for w in s.e2e_workloads
            if w in s.workloads
        ]
    if s.sweep and "sds3d" in s.workloads:
        sw = (
            SweepSettings(
                settings=((16, 8), (32, 16)),
                train_steps=8,
                replications=6,
                pilot_outer=4,
                pilot_inner=4,
                k_max=16,
                quick=True,
                teacher=s.teacher,
            )
            if s.quick
            else SweepSettings(seed=s.seed, teacher=s.teacher)
        )
        result["sweep"] = cost_sweep(sw, progress)
    if s.scaling:
        if progress is not None:
            progress("controller scaling")
        result["scaling"] = scaling_table(dims=(256, 65536) if s.quick else (256, 65536, 1048576))
    result["wall_seconds"] = time.perf_counter() - t0
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    (out / "bench.md").write_text(report.markdown_report(result))
    report.plot_ecm(result).savefig(out / "ecm.png", dpi=110)
    report.plot_calibration(result).savefig(out / "calibration.png", dpi=110)
    if "sweep" in result:
        report.plot_sweep(result["sweep"]).savefig(out / "cost_sweep.png", dpi=110)
    plt.close("all")
    return result
