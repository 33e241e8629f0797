"""Time to quality on SDS-3D: quality against compute for four arms, charged by a cost clock.

Users buy quality per second. Each arm trains the same scenes (one per seed: the seed sets the scene's
initialization and every draw) until it has spent the baseline's budget on a :class:`~carv_adapt.bench.cost_clock.
CostClock` calibrated once on this machine (docs/theory.md §3, §7.1), and is scored at fixed fractions of that
budget on the 16 fixed views of :data:`~carv_adapt.workloads.sds3d.EVAL_POSES`:

- ``log_p``: the mean log-probability of the target digit under the real-digits classifier;
- ``pixel_mse``: the mean squared pixel distance to the renders of a reference scene, trained by the baseline
  ``reference_factor`` times as long (cached in the output folder, one per seed-independent config).

The arms (docs/theory.md §10): ``baseline`` (``K = 1``, uniform, i.i.d.); ``fixed_k8`` (``K = 8``, the
teacher-weight prior mixed with ``alpha`` of the target, stratified, frozen: the paper's choice); and the online
controller with the demo's settings and parameter-space probes, deciding by ``objective="variance"`` or by
``objective="progress"`` (§13). Run ``python -m carv_adapt.bench.ttq --out DIR`` (``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from carv_adapt.bench.cost_clock import (
    ClockedController,
    CostClock,
    cached_calibration,
    config_key,
    machine_description,
    run_counts,
)
from carv_adapt.bench.ttq_analysis import analyze, markdown, plot

__all__ = ["ARMS", "TTQSettings", "time_to_quality", "main"]

ARMS = ("baseline", "fixed_k8", "adaptive_variance", "adaptive_progress")

_QUICK = {"steps": 24, "seeds": (0, 1), "curve_points": 4, "reference_factor": 3.0, "calibration_reps": 2}
_FULL = {"steps": 700, "seeds": (0, 1, 2, 3, 4), "curve_points": 20, "reference_factor": 9.0, "calibration_reps": 7}


@dataclass(frozen=True)
class TTQSettings:
    """What :func:`time_to_quality` runs. Fields left ``None`` take the full run's value, or with ``quick`` a
    smoke test's (24 steps, 2 seeds, a 12^3 grid with 16 samples per ray: well formed, not a measurement).

    Attributes:
        steps: the baseline's training steps; their cost-clock compute is every arm's budget.
        seeds: one scene per seed (initialization and draws), shared by the arms.
        max_angle_deg: the training cameras' cone around the front view (180: the whole sphere).
        init_noise: std of the seeded noise on the initial scene's raw grids (the seed changes the start too).
        checkpoints: budget fractions of the time-to-quality table (1.0: quality at equal compute).
        curve_points: a denser grid ``i / curve_points`` of checkpoints for the curves.
        reference_factor, reference_seed: the reference scene trains ``reference_factor x steps`` baseline steps
            from its own seed (not one of ``seeds``, so no arm shares its draws).
        fixed_k, fixed_alpha: the frozen arm's K and defensive mixture weight of the prior.
        k_max: the controller's K bound (the demo's memory cap).
        calibration_reps: timed calls per stage and batch size; recalibrate: ignore a cached calibration.
        config: further :class:`~carv_adapt.workloads.sds3d.SDS3DConfig` fields.
    """

    steps: int | None = None
    seeds: tuple[int, ...] | None = None
    max_angle_deg: float = 90.0
    init_noise: float = 0.1
    checkpoints: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    curve_points: int | None = None
    reference_factor: float | None = None
    reference_seed: int = 1000
    fixed_k: int = 8
    fixed_alpha: float = 0.1
    k_max: int = 16
    arms: tuple[str, ...] = ARMS
    calibration_reps: int | None = None
    recalibrate: bool = False
    quick: bool = False
    out: Path = Path("ttq_report")
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k, v in (_QUICK if self.quick else _FULL).items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        if not self.arms or self.arms[0] != "baseline" or any(a not in ARMS for a in self.arms):
            raise ValueError(f"arms must start with 'baseline' and be among {ARMS}, got {self.arms}")
        if 1.0 not in self.checkpoints or any(not 0 < c <= 1 for c in self.checkpoints):
            raise ValueError(f"checkpoints must lie in (0, 1] and include 1.0, got {self.checkpoints}")
        if self.steps < 4 or self.curve_points < 1 or not self.seeds:
            raise ValueError("need steps >= 4, curve_points >= 1 and at least one seed")

    def fractions(self) -> tuple[float, ...]:
        """Every checkpoint: 0 (the initial scene), the curve grid and the table's fractions."""
        grid = {round(i / self.curve_points, 12) for i in range(self.curve_points + 1)}
        return tuple(sorted(grid | {float(c) for c in self.checkpoints}))

    def workload_config(self) -> dict[str, Any]:
        """SDS3DConfig fields except the seed (the adapter's quick sizes with ``quick``)."""
        base = {"grid_size": 12, "samples_per_ray": 16} if self.quick else {}
        return {**base, "max_angle_deg": self.max_angle_deg, "init_noise": self.init_noise, **self.config}


def _calibration(s: TTQSettings, wl: Any, out: Path, say: Callable[[str], None]) -> tuple[CostClock, dict[str, Any]]:
    """The cost clock of this machine and config, from ``out/calibration.json`` when it was made here."""
    return cached_calibration(wl, out / "calibration.json", s.calibration_reps, s.recalibrate, say)


def _reference(s: TTQSettings, teacher: Any, out: Path, say: Callable[[str], None]) -> tuple[torch.Tensor, dict]:
    """Renders of the reference scene on the evaluation views (trained once per seed-independent config)."""
    from carv_adapt.workloads.sds3d import EVAL_POSES, SDS3DConfig, SDS3DWorkload

    cfg = SDS3DConfig(seed=s.reference_seed, **s.workload_config())
    steps = int(round(s.reference_factor * s.steps))
    info: dict[str, Any] = {"steps": steps, "seed": s.reference_seed}
    cfg_fields = {k: v for k, v in cfg.model_dump().items() if k != "seed"}
    key = config_key({**info, "config": cfg_fields, "poses": EVAL_POSES})
    path = out / f"reference_{key}.pt"
    if path.exists():
        d = torch.load(path)
        return d["images"], {**d["info"], "cached": True, "path": str(path)}
    say(f"reference scene: {steps} baseline steps (cached as {path.name})")
    wl = SDS3DWorkload(cfg, teacher=teacher)
    t0 = time.perf_counter()
    run = wl.run(steps)
    scene = wl.scene_from_state(run.final_state)
    images = wl.view_images(scene)
    info.update(key=key, log_p=wl.log_prob(scene), wall_seconds=time.perf_counter() - t0)
    torch.save({"images": images, "state": run.final_state, "info": info}, path)
    return images, {**info, "cached": False, "path": str(path)}


def _arm(name: str, s: TTQSettings, a: Any, seed: int) -> tuple[Any, Any]:
    """``(controller, fixed policy)`` of an arm, one of them None."""
    from carv_adapt.demo import demo_controller
    from carv_adapt.estimator import HierarchicalEstimator
    from carv_adapt.proposals import TargetMeasure, defensive_mixture, teacher_weight_proposal
    from carv_adapt.workloads.base import default_policy

    wl = a.wl
    if name == "baseline":
        return None, default_policy(wl.teacher, wl.config)
    if name == "fixed_k8":
        target = TargetMeasure(wl.teacher.num_timesteps, wl.config.t_min, wl.config.t_max)
        prior = teacher_weight_proposal(target, wl.weight, wl.teacher.alphas_cumprod)
        return None, HierarchicalEstimator(
            defensive_mixture(prior, s.fixed_alpha), N=a.batch_size, K=s.fixed_k, stratification="stratified", seed=seed
        )
    objective = name.removeprefix("adaptive_")
    # The adaptive arms take fewer, costlier steps than the baseline's: size the warm-up and the refit interval
    # by a tenth-ish of their own run, not by the baseline's step count.
    timing = {"warmup_steps": max(10, s.steps // 14), "refit_every": max(5, s.steps // 35)}
    ctrl = demo_controller(a, s.steps, seed, objective=objective, k_max=s.k_max, space="parameter", **timing)
    return ctrl, None


def arm_labels(s: TTQSettings) -> dict[str, str]:
    return {
        "baseline": "baseline (K=1, uniform, iid)",
        "fixed_k8": f"fixed K={s.fixed_k}, prior IS (alpha={s.fixed_alpha:g}), stratified",
        "adaptive_variance": "adaptive, objective=variance",
        "adaptive_progress": "adaptive, objective=progress",
    }


def _refit_row(r: Any) -> dict[str, Any]:
    return {
        "step": r.step,
        "K": r.K,
        "sigma_b2": r.sigma_b2,
        "sigma_w2": r.sigma_w2,
        "predicted_ecm": r.predicted_ecm,
        "space": r.space,
        "reason": r.reason,
    }


def _run_row(arm: str, seed: int, run: Any, wall: float, clock: CostClock) -> dict[str, Any]:
    last = run.checkpoints[-1]
    return {
        "arm": arm,
        "seed": seed,
        **run_counts(run, clock),
        "compute": last.compute,
        "measured_seconds": last.seconds,
        "wall_seconds": last.wall,
        "run_wall_seconds": wall,
        "refits": len(run.history),
        "refit_log": [_refit_row(r) for r in run.history],
        "exhausted": run.exhausted,
        "curve": [
            {
                "fraction": c.fraction,
                "step": c.step,
                "compute": c.compute,
                "compute_fraction": c.compute / run.budget,
                "seconds": c.seconds,
                "wall": c.wall,
                **c.scores,
            }
            for c in run.checkpoints
        ],
    }


def time_to_quality(settings: TTQSettings, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the time-to-quality benchmark; writes ``ttq.json``, ``ttq.md`` and ``ttq.png`` to ``settings.out``
    (plus the cached ``calibration.json`` and ``reference_*.pt``) and returns the result dict."""
    import matplotlib.pyplot as plt

    from carv_adapt.adapters import build_adapter
    from carv_adapt.workloads.sds3d import SDS3DConfig, SDS3DWorkload

    s = settings
    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    a0 = build_adapter("sds3d", s.seeds[0], s.quick, **{k: v for k, v in s.workload_config().items()})
    teacher = a0.wl.teacher
    clock, raw = _calibration(s, a0.wl, out, say)
    budget = s.steps * clock.step_cost(a0.batch_size, 1, False)
    ref_images, ref_info = _reference(s, teacher, out, say)
    fractions = s.fractions()
    runs = []
    for seed in s.seeds:
        wl = SDS3DWorkload(SDS3DConfig(seed=seed, **s.workload_config()), teacher=teacher)
        a = replace(a0, wl=wl)  # the controller factory reads only the workload, batch size, space and weight
        scores = {"log_p": wl.log_prob, "pixel_mse": lambda scene, wl=wl: wl.pixel_distance(scene, ref_images)}
        for arm in s.arms:
            say(f"seed {seed}: {arm}")
            ctrl, pol = _arm(arm, s, a, seed)
            ctrl = None if ctrl is None else ClockedController(ctrl, clock)  # decides on the costs it is charged
            t0 = time.perf_counter()
            run = wl.run_to_compute(
                clock.step_cost, budget, fractions, scores, controller=ctrl, policy=pol, max_steps=2 * s.steps + 10
            )
            runs.append(_run_row(arm, seed, run, time.perf_counter() - t0, clock))
    result: dict[str, Any] = {
        "command": "python -m carv_adapt.bench.ttq " + " ".join(sys.argv[1:]),
        "machine": machine_description(),
        "settings": {**asdict(s), "out": str(s.out)},
        "workload_config": SDS3DConfig(seed=0, **s.workload_config()).model_dump(),
        "arm_labels": arm_labels(s),
        "clock": clock.to_dict(),
        "calibration": raw,
        "budget": budget,
        "baseline_step_cost": clock.step_cost(a0.batch_size, 1, False),
        "reference": ref_info,
        "fractions": list(fractions),
        "runs": runs,
    }
    result["analysis"] = analyze(runs, s.arms, s.seeds, s.checkpoints)
    result["wall_seconds"] = time.perf_counter() - t_start
    (out / "ttq.json").write_text(json.dumps(result, indent=1))
    (out / "ttq.md").write_text(markdown(result))
    plot(result).savefig(out / "ttq.png", dpi=110)
    plt.close("all")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m carv_adapt.bench.ttq --out DIR [--quick] [--steps S] [--seeds N] [--max-angle-deg A]``."""
    p = argparse.ArgumentParser(prog="python -m carv_adapt.bench.ttq", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="ttq_report", help="folder for ttq.json, ttq.md, ttq.png and the caches")
    p.add_argument("--steps", type=int, default=None, help="the baseline's steps; its compute is every arm's budget")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1)")
    p.add_argument("--max-angle-deg", type=float, default=90.0, help="training camera cone (180: whole sphere)")
    p.add_argument("--curve-points", type=int, default=None, help="checkpoints i/P of the curves")
    p.add_argument("--reference-factor", type=float, default=None, help="reference scene: this many x steps")
    p.add_argument("--recalibrate", action="store_true", help="ignore a cached calibration.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = TTQSettings(
        steps=args.steps,
        seeds=None if args.seeds is None else tuple(range(args.seeds)),
        max_angle_deg=args.max_angle_deg,
        curve_points=args.curve_points,
        reference_factor=args.reference_factor,
        recalibrate=args.recalibrate,
        quick=args.quick,
        out=Path(args.out),
    )
    result = time_to_quality(s, progress=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True))
    print((Path(args.out) / "ttq.md").read_text())
    print(f"wrote {args.out}/ttq.json, ttq.md, ttq.png in {result['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
