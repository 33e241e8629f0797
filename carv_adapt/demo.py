"""``carv-adapt demo``: a workload trained twice at equal measured compute (baseline vs adaptive), the
measured ECM at the final parameters, a table, plots and ``summary.json``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from carv_adapt.controller import AdaptiveController
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.fit.logs import JsonlRefitLog
from carv_adapt.measure import Measurement, measure_W
from carv_adapt.proposals import TargetMeasure, UniformProposal, teacher_weight_proposal

__all__ = ["DemoSettings", "run_demo", "WORKLOADS"]

WORKLOADS = ("sds3d",)


@dataclass(frozen=True)
class DemoSettings:
    workload: str = "sds3d"
    steps: int = 60
    seed: int = 0
    out: Path = Path("carv_report")
    replications: int = 30
    quick: bool = False


def _sds3d(settings: DemoSettings) -> Any:
    from carv_adapt.workloads.sds3d import SDS3DConfig, SDS3DWorkload

    cfg = SDS3DConfig(
        seed=settings.seed, grid_size=12 if settings.quick else 20, samples_per_ray=16 if settings.quick else 32
    )
    return SDS3DWorkload(cfg)


def run_demo(settings: DemoSettings, progress: Any = None) -> dict[str, Any]:
    """Run the demo and write its report folder; returns the summary dict (also ``summary.json``)."""
    if settings.workload not in WORKLOADS:
        raise ValueError(f"unknown workload {settings.workload!r}; choose one of {list(WORKLOADS)}")
    torch.manual_seed(settings.seed)
    wl = _sds3d(settings)
    c = wl.config
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "refits.jsonl").unlink(missing_ok=True)
    score_every = max(1, settings.steps // 4)
    target = TargetMeasure(wl.teacher.num_timesteps, c.t_min, c.t_max)

    def tick(task: Any) -> Any:
        return (lambda rec: progress.advance(task)) if progress is not None else None

    task = progress.add_task("baseline (K=1, uniform, iid)", total=settings.steps) if progress else None
    base = wl.run(settings.steps, score_every=score_every, on_step=tick(task))
    ctrl = AdaptiveController(
        num_timesteps=wl.teacher.num_timesteps,
        t_min=c.t_min,
        t_max=c.t_max,
        batch_size=c.batch_size,
        warmup_steps=max(4, settings.steps // 6),
        refit_every=max(2, settings.steps // 12),
        k_max=16,
        forgetting=0.97,
        seed=settings.seed,
        warmup_proposal="prior",
        prior=teacher_weight_proposal(target, wl.weight, wl.teacher.alphas_cumprod),
        logger=JsonlRefitLog(out / "refits.jsonl"),
    )
    task = progress.add_task("adaptive (equal compute)", total=settings.steps) if progress else None
    adapt = wl.run(
        settings.steps * 8,
        controller=ctrl,
        compute_budget=base.compute_seconds,
        score_every=score_every,
        on_step=tick(task),
    )
    if progress is not None:
        progress.update(task, completed=settings.steps)

    # Measured ECM at the adaptive run's final scene, parameter-space variance x measured time.
    scene = wl.scene_from_state(adapt.final_state)
    g = torch.Generator().manual_seed(settings.seed + 99)
    baseline_policy = HierarchicalEstimator(
        UniformProposal(target), N=c.batch_size, K=1, stratification="iid", seed=settings.seed + 1
    )
    adaptive_policy = HierarchicalEstimator(ctrl.proposal, N=c.batch_size, K=ctrl.K, seed=settings.seed + 2)
    task = progress.add_task("measuring W at frozen parameters", total=2) if progress else None
    m_base = measure_W(lambda p: wl.gradient(scene, p, g), baseline_policy, settings.replications)
    if progress:
        progress.advance(task)
    m_adapt = measure_W(lambda p: wl.gradient(scene, p, g), adaptive_policy, settings.replications)
    if progress:
        progress.advance(task)

    last = ctrl.history[-1] if ctrl.history else None
    summary = _summary(settings, base, adapt, m_base, m_adapt, last, wl)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    torch.save(ctrl.state_dict(), out / "controller_state.pt")
    _write_plots(out, wl, base, adapt, scene)
    return summary


def _summary(
    settings: DemoSettings, base: Any, adapt: Any, m_base: Measurement, m_adapt: Measurement, last: Any, wl: Any
) -> dict[str, Any]:
    def run_row(r: Any) -> dict[str, Any]:
        means = r.stage_means()
        return {
            "steps": len(r.records),
            "compute_seconds": r.compute_seconds,
            "final_K": r.records[-1].K,
            "final_score": r.scores[-1][1] if r.scores else None,
            "scores": r.scores,
            "c_out_seconds": means.get("upstream", 0.0) + means.get("backward", 0.0),
            "c_in_seconds": means.get("teacher", 0.0),
        }

    return {
        "workload": settings.workload,
        "config": wl.config.model_dump(),
        "seed": settings.seed,
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
        },
        "measured": {
            "replications": m_base.R,
            "baseline_W": m_base.W,
            "baseline_variance": m_base.variance,
            "baseline_seconds_per_estimate": m_base.seconds_per_estimate,
            "adaptive_W": m_adapt.W,
            "adaptive_variance": m_adapt.variance,
            "adaptive_seconds_per_estimate": m_adapt.seconds_per_estimate,
            "ecm": m_adapt.ecm_against(m_base),
            "variance_relative_se": max(m_base.relative_se, m_adapt.relative_se),
        },
    }


def _write_plots(out: Path, wl: Any, base: Any, adapt: Any, scene: Any) -> None:
    from carv_adapt import plots
    from carv_adapt.workloads.render import front_cameras, render, sample_cameras

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
    c = wl.config
    views = {}
    for name, r in (("baseline", base), ("adaptive", adapt)):
        sc = wl.scene_from_state(r.final_state)
        cams = sample_cameras(4, torch.Generator().manual_seed(7), c.max_angle_deg)
        with torch.no_grad():
            views[name] = torch.cat(
                [render(sc, front_cameras(), 32, c.samples_per_ray), render(sc, cams, 32, c.samples_per_ray)]
            )
    figs["views.png"] = plots.plot_views(views)
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110)
    import matplotlib.pyplot as plt

    plt.close("all")


def _stage_totals(r: Any) -> dict[str, float]:
    tot: dict[str, float] = {}
    for rec in r.records:
        for k, v in rec.seconds.items():
            tot[k] = tot.get(k, 0.0) + v
    return tot


def format_table(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of the demo table: header first."""

    def f(x: Any, fmt: str = "{:.3g}") -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

    b, a, m, ctl = summary["baseline"], summary["adaptive"], summary["measured"], summary["controller"] or {}
    return [
        ["run", "steps", "compute s", "K", "c_out ms", "c_in ms", "sigma_B^2", "sigma_W^2", "score", "ECM"],
        [
            "baseline",
            str(b["steps"]),
            f(b["compute_seconds"], "{:.1f}"),
            "1",
            f(1e3 * b["c_out_seconds"]),
            f(1e3 * b["c_in_seconds"]),
            "-",
            "-",
            f(b["final_score"], "{:.3f}"),
            "1.00",
        ],
        [
            "adaptive",
            str(a["steps"]),
            f(a["compute_seconds"], "{:.1f}"),
            str(a["final_K"]),
            f(1e3 * a["c_out_seconds"]),
            f(1e3 * a["c_in_seconds"]),
            f(ctl.get("sigma_b2")),
            f(ctl.get("sigma_w2")),
            f(a["final_score"], "{:.3f}"),
            f(m["ecm"], "{:.2f}") + f" (pred {f(ctl.get('predicted_ecm'), '{:.2f}')})",
        ],
    ]
