"""``carv-adapt demo``: a workload run twice at equal measured compute (baseline vs adaptive), the measured
ECM at frozen final parameters, a table, plots and ``summary.json``. Workloads: ``sds3d``, ``distill``,
``attribution``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from carv_adapt.adapters import WORKLOADS, WorkloadAdapter, build_adapter
from carv_adapt.controller import AdaptiveController
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.fit.logs import JsonlRefitLog
from carv_adapt.measure import Measurement, measure_W
from carv_adapt.proposals import TargetMeasure, UniformProposal, teacher_weight_proposal

__all__ = ["DemoSettings", "run_demo", "demo_controller", "equal_compute_runs", "WORKLOADS", "format_table"]


@dataclass(frozen=True)
class DemoSettings:
    workload: str = "sds3d"
    steps: int = 60
    seed: int = 0
    out: Path = Path("carv_report")
    replications: int = 30
    quick: bool = False


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


def run_demo(settings: DemoSettings, progress: Any = None) -> dict[str, Any]:
    """Run the demo and write its report folder; returns the summary dict (also ``summary.json``)."""
    if settings.workload not in WORKLOADS:
        raise ValueError(f"unknown workload {settings.workload!r}; choose one of {list(WORKLOADS)}")
    torch.manual_seed(settings.seed)
    a = build_adapter(settings.workload, settings.seed, settings.quick)
    wl = a.wl
    c = wl.config
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "refits.jsonl").unlink(missing_ok=True)
    target = TargetMeasure(wl.teacher.num_timesteps, c.t_min, c.t_max)

    def tick(task: Any) -> Any:
        return (lambda rec: progress.advance(task)) if progress is not None else None

    tasks = (
        (
            progress.add_task("baseline (K=1, uniform, iid)", total=None),
            progress.add_task("adaptive (equal compute)", total=None),
        )
        if progress
        else (None, None)
    )
    base, adapt, ctrl = equal_compute_runs(
        a,
        settings.steps,
        settings.seed,
        on_step=(tick(tasks[0]), tick(tasks[1])),
        logger=JsonlRefitLog(out / "refits.jsonl"),
    )

    # Measured ECM at the adaptive run's final parameters: variance of the final estimate x measured time.
    estimate = a.estimator(getattr(adapt, "final_state", {}))
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

    summary = _summary(settings, a, base, adapt, m_base, m_adapt, ctrl)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    torch.save(ctrl.state_dict(), out / "controller_state.pt")
    _write_plots(out, a, base, adapt)
    return summary


def _summary(
    settings: DemoSettings,
    a: WorkloadAdapter,
    base: Any,
    adapt: Any,
    m_base: Measurement,
    m_adapt: Measurement,
    ctrl: AdaptiveController,
) -> dict[str, Any]:
    def run_row(r: Any) -> dict[str, Any]:
        n = sum(x.N for x in r.records)
        nk = sum(x.N * x.K for x in r.records)
        tot = _stage_totals(r)
        return {
            "steps": len(r.records),
            "compute_seconds": r.compute_seconds,
            "final_K": r.records[-1].K,
            "quality": a.quality(r),
            "c_out_seconds": (tot.get("upstream", 0.0) + tot.get("backward", 0.0)) / n,
            "c_in_seconds": tot.get("teacher", 0.0) / nk,
            "stage_seconds_per_step": {k: v / len(r.records) for k, v in tot.items()},
        }

    last = ctrl.history[-1] if ctrl.history else None
    return {
        "workload": settings.workload,
        "config": a.wl.config.model_dump(),
        "seed": settings.seed,
        "quality_metric": a.quality_name,
        "baseline": run_row(base),
        "adaptive": run_row(adapt),
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


def _stage_totals(r: Any) -> dict[str, float]:
    tot: dict[str, float] = {}
    for rec in r.records:
        for k, v in rec.seconds.items():
            tot[k] = tot.get(k, 0.0) + v
    return tot


def _write_plots(out: Path, a: WorkloadAdapter, base: Any, adapt: Any) -> None:
    import matplotlib.pyplot as plt

    from carv_adapt import plots

    figs = {
        "proposal.png": plots.plot_proposal_history(adapt.history),
        "k.png": plots.plot_k_history(
            {"baseline": [(r.step, r.K) for r in base.records], "adaptive": [(r.step, r.K) for r in adapt.records]}
        ),
        "costs.png": plots.plot_cost_breakdown(
            {
                name: {k: v / len(r.records) for k, v in _stage_totals(r).items()}
                for name, r in (("baseline", base), ("adaptive", adapt))
            }
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
    """Rows of the demo table: header first."""

    def f(x: Any, fmt: str = "{:.3g}") -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

    b, ad, m, ctl = summary["baseline"], summary["adaptive"], summary["measured"], summary["controller"] or {}
    q = summary["quality_metric"]
    return [
        ["run", "steps", "compute s", "K", "c_out ms", "c_in ms", "sigma_B^2", "sigma_W^2", q, "measured ECM"],
        [
            "baseline",
            str(b["steps"]),
            f(b["compute_seconds"], "{:.1f}"),
            "1",
            f(1e3 * b["c_out_seconds"]),
            f(1e3 * b["c_in_seconds"]),
            "-",
            "-",
            f(b["quality"], "{:.3f}"),
            "1.00",
        ],
        [
            "adaptive",
            str(ad["steps"]),
            f(ad["compute_seconds"], "{:.1f}"),
            str(ad["final_K"]),
            f(1e3 * ad["c_out_seconds"]),
            f(1e3 * ad["c_in_seconds"]),
            f(ctl.get("sigma_b2")),
            f(ctl.get("sigma_w2")),
            f(ad["quality"], "{:.3f}"),
            f(m["ecm"], "{:.2f}") + f" (controller predicted {f(ctl.get('predicted_ecm'), '{:.2f}')})",
        ],
    ]
