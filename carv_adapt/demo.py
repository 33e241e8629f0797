"""``carv-adapt demo``: a workload run twice at equal compute (baseline vs adaptive), each scored at a schedule of
fractions of the baseline's compute, then the measured ECM at frozen final parameters, a table, plots and
``summary.json``. Workloads: ``sds3d``, ``distill``, ``attribution``.

The method pays in time to quality (docs/theory.md §10, §13): besides the variance the demo reports quality against
compute (``quality_vs_compute.png``) and the compute each run needs to reach the baseline's quality at 25, 50 and
75 % of its budget, interpolated on the monotone envelope (:mod:`carv_adapt.bench.ttq_analysis`). Compute is the
cost clock of :mod:`carv_adapt.bench.cost_clock` where the workload has one cheap to calibrate (``sds3d``), else
the measured stage seconds; ``summary.json`` says which.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from carv_adapt.adapters import WORKLOADS, WorkloadAdapter, build_adapter
from carv_adapt.controller import AdaptiveController
from carv_adapt.curves import compute_to_baseline_quality
from carv_adapt.curves import quality_curve as _curve
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.fit.logs import JsonlRefitLog
from carv_adapt.measure import Measurement, measure_W
from carv_adapt.proposals import TargetMeasure, UniformProposal, teacher_weight_proposal
from carv_adapt.workloads.base import ComputeRun, StepRecord

__all__ = ["DemoSettings", "DEMO_CONFIG", "run_demo", "demo_controller", "equal_compute_runs"]
__all__ += ["equal_compute_curves", "compute_to_baseline_quality", "WORKLOADS", "format_table"]


# In a 25-degree cone every view is recognised early and both runs saturate; up to 90 degrees, from a seeded noisy
# start, the side views keep improving over the run (the time-to-quality benchmark's setting, docs/theory.md §10).
DEMO_CONFIG: dict[str, dict[str, Any]] = {"sds3d": {"max_angle_deg": 90.0, "init_noise": 0.1}}


@dataclass(frozen=True)
class DemoSettings:
    workload: str = "sds3d"
    steps: int = 60
    seed: int = 0
    out: Path = Path("carv_report")
    replications: int = 30
    quick: bool = False
    curve_points: int = 10
    levels: tuple[float, ...] = (0.25, 0.5, 0.75)
    teacher: str | None = None  # sds3d: a shipped teacher's name or a diffusers folder (teachers.load)
    config: dict[str, Any] | None = None  # workload config fields; None: DEMO_CONFIG's for the workload

    def workload_config(self) -> dict[str, Any]:
        """The workload config fields the demo overrides: ``config``, else :data:`DEMO_CONFIG`'s for the workload."""
        return dict(DEMO_CONFIG.get(self.workload, {}) if self.config is None else self.config)

    def fractions(self) -> tuple[float, ...]:
        """The checkpoints, as fractions of the baseline's compute: 0, ``i / curve_points`` and the ``levels``."""
        if self.curve_points < 1 or any(not 0 < f < 1 for f in self.levels):
            raise ValueError(f"need curve_points >= 1 and levels in (0, 1), got {self.curve_points}, {self.levels}")
        grid = {round(i / self.curve_points, 12) for i in range(self.curve_points + 1)}
        return tuple(sorted(grid | {float(f) for f in self.levels}))


def demo_controller(a: WorkloadAdapter, steps: int, seed: int, **overrides: Any) -> AdaptiveController:
    """The controller the demo (and the benchmarks) run on a workload of ``steps`` training steps: warm-up for
    a sixth of the controller steps, a refit every twelfth, ``K <= 16`` (the demo's memory cap)."""
    wl = a.wl
    n = a.controller_steps(steps)
    c = wl.config
    target = TargetMeasure(wl.teacher.num_timesteps, c.t_min, c.t_max)
    kw: dict[str, Any] = dict(
        num_timesteps=wl.teacher.num_timesteps,
        t_min=c.t_min,
        t_max=c.t_max,
        batch_size=a.batch_size,
        warmup_steps=max(4, n // 6),
        refit_every=max(2, n // 12),
        k_max=16,
        forgetting=0.97,
        seed=seed,
        space=a.space,
        # The teacher-weight prior is derived for SDS-type integrands (docs/theory.md §5); only sds3d declares it.
        warmup_proposal="prior" if a.sds_prior else "uniform",
        prior=teacher_weight_proposal(target, a.weight, wl.teacher.alphas_cumprod) if a.sds_prior else None,
    )
    kw.update(overrides)
    return AdaptiveController(**kw)


def equal_compute_runs(
    a: WorkloadAdapter, steps: int, seed: int, on_step: tuple[Any, Any] = (None, None), **controller_kw: Any
) -> tuple[Any, Any, AdaptiveController]:
    """The baseline for ``steps`` steps, then the :func:`demo_controller` run until the baseline's measured
    compute is spent. Returns ``(baseline result, adaptive result, controller)``."""
    base = a.run(steps, on_step=on_step[0])
    ctrl = demo_controller(a, steps, seed, **controller_kw)
    adapt = a.run(steps * 8, controller=ctrl, compute_budget=base.compute_seconds, on_step=on_step[1])
    return base, adapt, ctrl


def equal_compute_curves(
    a: WorkloadAdapter,
    steps: int,
    seed: int,
    fractions: tuple[float, ...],
    clock: Any = None,
    on_step: tuple[Any, Any] = (None, None),
    **controller_kw: Any,
) -> tuple[ComputeRun, ComputeRun, AdaptiveController, float]:
    """The baseline for ``steps`` steps, then the :func:`demo_controller` run on the baseline's compute, both scored
    (the adapter's quality metric) at each of ``fractions`` of that compute and nowhere else.

    With a cost clock (a :class:`~carv_adapt.bench.cost_clock.CostClock`, docs/theory.md §3) both runs are charged by
    it, the controller observes its charges (:class:`~carv_adapt.bench.cost_clock.ClockedController`), and the
    budget is the baseline's steps at its step cost. Without one the baseline's checkpoints fall at fractions of its
    steps (its steps all cost the same), its budget is the measured stage seconds it took, and the adaptive run is
    charged its measured stage seconds. The adaptive run stops before the step that would pass the budget, or after
    8x the baseline's steps. Returns ``(baseline, adaptive, controller, budget)``."""
    if a.run_to_compute is None:
        raise ValueError("this workload adapter has no run_to_compute")
    n = a.controller_steps(steps)
    if clock is None:
        base = a.run_to_compute(lambda N, K, probed: 1.0, float(n), fractions, on_step=on_step[0])
        budget, step_cost = base.checkpoints[-1].seconds, None
    else:
        budget, step_cost = n * clock.step_cost(a.batch_size, 1, False), clock.step_cost
        base = a.run_to_compute(step_cost, budget, fractions, on_step=on_step[0])
    ctrl = demo_controller(a, steps, seed, **controller_kw)
    from carv_adapt.bench.cost_clock import ClockedController  # the bench package imports this module

    # Charged by the clock, the controller decides on the clock's costs too (not on timers a neighbour's load moves).
    sampler = ctrl if clock is None else ClockedController(ctrl, clock)
    adapt = a.run_to_compute(step_cost, budget, fractions, controller=sampler, max_steps=8 * n, on_step=on_step[1])
    return base, adapt, ctrl, budget


def run_demo(settings: DemoSettings, progress: Any = None) -> dict[str, Any]:
    """Run the demo and write its report folder; returns the summary dict (also ``summary.json``)."""
    if settings.workload not in WORKLOADS:
        raise ValueError(f"unknown workload {settings.workload!r}; choose one of {list(WORKLOADS)}")
    torch.manual_seed(settings.seed)
    a = build_adapter(
        settings.workload, settings.seed, settings.quick, teacher=settings.teacher, **settings.workload_config()
    )
    wl = a.wl
    c = wl.config
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "refits.jsonl").unlink(missing_ok=True)
    target = TargetMeasure(wl.teacher.num_timesteps, c.t_min, c.t_max)

    def tick(task: Any) -> Any:
        return (lambda rec: progress.advance(task)) if progress is not None else None

    clock, calibration = None, None
    if a.cost_clock is not None:
        task = progress.add_task("calibrating the cost clock", total=1) if progress else None
        clock, calibration = a.cost_clock(out / "calibration.json", None)
        if progress:
            progress.advance(task)
    tasks = (
        (
            progress.add_task("baseline (K=1, uniform, iid)", total=None),
            progress.add_task("adaptive (equal compute)", total=None),
        )
        if progress
        else (None, None)
    )
    base, adapt, ctrl, budget = equal_compute_curves(
        a,
        settings.steps,
        settings.seed,
        settings.fractions(),
        clock,
        on_step=(tick(tasks[0]), tick(tasks[1])),
        logger=JsonlRefitLog(out / "refits.jsonl"),
    )

    # Measured ECM at the adaptive run's final parameters: variance of the final estimate x measured time.
    estimate = a.estimator(adapt.final_state)
    baseline_policy = HierarchicalEstimator(
        UniformProposal(target), N=a.batch_size, K=1, stratification="iid", seed=settings.seed + 1
    )
    adaptive_policy = HierarchicalEstimator(ctrl.proposal, N=a.batch_size, K=ctrl.K, seed=settings.seed + 2)
    task = progress.add_task("measuring W at frozen parameters", total=2) if progress else None
    m_base = measure_W(estimate, baseline_policy, settings.replications)
    if progress:
        progress.advance(task)
    m_adapt = measure_W(estimate, adaptive_policy, settings.replications)
    if progress:
        progress.advance(task)

    summary = _summary(settings, a, base, adapt, m_base, m_adapt, ctrl, budget, clock, calibration)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    torch.save(ctrl.state_dict(), out / "controller_state.pt")
    _write_plots(out, a, base, adapt, summary)
    return summary


def _clock_row(budget: float, clock: Any, calibration: dict[str, Any] | None) -> dict[str, Any]:
    if clock is None:
        return {
            "kind": "measured",
            "description": "measured stage seconds (this workload has no cost clock; the baseline is checkpointed at "
            "fractions of its steps)",
            "budget": budget,
            "costs": None,
        }
    cached = bool(calibration and calibration.get("cached"))
    return {
        "kind": "cost_clock",
        "description": f"cost clock calibrated on this machine{' (cached)' if cached else ''}: a step costs "
        f"c_0 + N (c_out + K c_in) = {1e3 * clock.c_0:.1f} + N ({1e3 * clock.c_out:.1f} + K {1e3 * clock.c_in:.2f}) "
        "ms, plus its probe",
        "budget": budget,
        "costs": clock.to_dict(),
        "calibration": calibration,
    }


def _summary(
    settings: DemoSettings,
    a: WorkloadAdapter,
    base: ComputeRun,
    adapt: ComputeRun,
    m_base: Measurement,
    m_adapt: Measurement,
    ctrl: AdaptiveController,
    budget: float,
    clock: Any,
    calibration: dict[str, Any] | None,
) -> dict[str, Any]:
    measured = clock is None
    curves = {"baseline": _curve(base, budget, measured), "adaptive": _curve(adapt, budget, measured)}
    levels = compute_to_baseline_quality(curves, settings.levels, a.higher_is_better)

    def run_row(name: str, r: ComputeRun) -> dict[str, Any]:
        last = r.checkpoints[-1]
        recs = _counted(r)
        n = max(sum(x.N for x in recs), 1)
        nk = max(sum(x.N * x.K for x in recs), 1)
        tot = _stage_totals(recs)
        return {
            "steps": len(recs),
            "compute": curves[name][-1]["compute"],
            "compute_seconds": last.seconds,
            "final_K": recs[-1].K if recs else None,
            "quality": curves[name][-1]["quality"],
            "compute_to_baseline_quality": {f"{100 * lv['fraction']:g}%": lv[name] for lv in levels},
            "exhausted": r.exhausted,
            "c_out_seconds": (tot.get("upstream", 0.0) + tot.get("backward", 0.0)) / n,
            "c_in_seconds": tot.get("teacher", 0.0) / nk,
            "stage_seconds_per_step": {k: v / max(len(recs), 1) for k, v in tot.items()},
        }

    last = ctrl.history[-1] if ctrl.history else None
    return {
        "workload": settings.workload,
        "config": a.wl.config.model_dump(),
        "seed": settings.seed,
        "quality_metric": a.curve_metric,
        "higher_is_better": a.higher_is_better,
        "clock": _clock_row(budget, clock, calibration),
        "baseline": run_row("baseline", base),
        "adaptive": run_row("adaptive", adapt),
        "time_to_quality": {
            "metric": a.curve_metric,
            "higher_is_better": a.higher_is_better,
            "fractions": list(settings.fractions()),
            "levels": levels,
            "curves": curves,
        },
        "controller": None
        if last is None
        else {
            "K": last.K,
            "sigma_b2": last.sigma_b2,
            "sigma_w2": last.sigma_w2,
            "c_out": last.c_out,
            "c_in": last.c_in,
            "c_0": last.c_0,
            "predicted_ecm": last.predicted_ecm,
            "is_gain": last.is_gain,
            "space": last.extra.get("space"),
            "refits": len(ctrl.history),
        },
        "measured": {
            "replications": m_base.R,
            "baseline_W": m_base.W,
            "baseline_variance": m_base.variance,
            "baseline_seconds_per_estimate": m_base.seconds_per_estimate,
            "adaptive_W": m_adapt.W,
            "adaptive_variance": m_adapt.variance,
            "adaptive_seconds_per_estimate": m_adapt.seconds_per_estimate,
            "variance_ratio": m_base.variance / m_adapt.variance if m_adapt.variance > 0 else math.nan,
            "ecm": m_adapt.ecm_against(m_base),
            "variance_relative_se": max(m_base.relative_se, m_adapt.relative_se),
        },
    }


def _counted(r: ComputeRun) -> list[StepRecord]:
    """The steps inside the budget (a last step that would have crossed it is recorded but not counted)."""
    return r.records[: r.checkpoints[-1].step]


def _stage_totals(records: list[StepRecord]) -> dict[str, float]:
    tot: dict[str, float] = {}
    for rec in records:
        for k, v in rec.seconds.items():
            tot[k] = tot.get(k, 0.0) + v
    return tot


def _write_plots(out: Path, a: WorkloadAdapter, base: ComputeRun, adapt: ComputeRun, summary: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    from carv_adapt import plots

    runs = {"baseline": _counted(base), "adaptive": _counted(adapt)}
    ttq = summary["time_to_quality"]
    clock = "cost clock" if summary["clock"]["kind"] == "cost_clock" else "measured stage seconds"
    figs = {
        "proposal.png": plots.plot_proposal_history(adapt.history),
        "k.png": plots.plot_k_history({name: [(r.step, r.K) for r in recs] for name, recs in runs.items()}),
        "costs.png": plots.plot_cost_breakdown(
            {name: {k: v / max(len(recs), 1) for k, v in _stage_totals(recs).items()} for name, recs in runs.items()}
        ),
        "quality_vs_compute.png": plots.plot_quality_vs_compute(
            {
                name: [(p["compute_fraction"], p["quality"]) for p in curve if p["quality"] is not None]
                for name, curve in ttq["curves"].items()
            },
            ttq["levels"],
            ttq["metric"],
            xlabel=f"compute (fraction of the baseline's budget, {clock})",
            higher_is_better=ttq["higher_is_better"],
        ),
    }
    if adapt.history:
        figs["profile.png"] = plots.plot_profile(adapt.history[-1])
    if a.views is not None:
        figs["views.png"] = plots.plot_views({"baseline": a.views(base), "adaptive": a.views(adapt)})
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110)
    plt.close("all")


def format_table(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of the demo table: header first. ``to base@F`` is the compute, as a fraction of the baseline's budget,
    a run needs to reach the baseline's quality at ``F`` of its budget (``>1``: not within its budget)."""

    def f(x: Any, fmt: str = "{:.3g}") -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

    b, ad, m, ctl = summary["baseline"], summary["adaptive"], summary["measured"], summary["controller"] or {}
    q = summary["quality_metric"]
    levels = summary["time_to_quality"]["levels"]

    def reach(row: dict[str, Any]) -> list[str]:
        cells = []
        for lv, need in zip(levels, row["compute_to_baseline_quality"].values()):
            cells.append("-" if lv["baseline_quality"] is None else (">1" if need is None else f"{need:.2f}"))
        return cells

    return [
        ["run", "steps", "compute s", "K", "c_out ms", "c_in ms", "sigma_B^2", "sigma_W^2", q]
        + [f"to base@{100 * lv['fraction']:g}%" for lv in levels]
        + ["measured ECM"],
        [
            "baseline",
            str(b["steps"]),
            f(b["compute"], "{:.1f}"),
            "1",
            f(1e3 * b["c_out_seconds"]),
            f(1e3 * b["c_in_seconds"]),
            "-",
            "-",
            f(b["quality"], "{:.3f}"),
            *reach(b),
            "1.00",
        ],
        [
            "adaptive",
            str(ad["steps"]),
            f(ad["compute"], "{:.1f}"),
            f(ad["final_K"], "{}"),
            f(1e3 * ad["c_out_seconds"]),
            f(1e3 * ad["c_in_seconds"]),
            f(ctl.get("sigma_b2")),
            f(ctl.get("sigma_w2")),
            f(ad["quality"], "{:.3f}"),
            *reach(ad),
            f(m["ecm"], "{:.2f}") + f" (predicted {f(ctl.get('predicted_ecm'), '{:.2f}')})",
        ],
    ]
