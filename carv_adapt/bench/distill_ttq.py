"""Distillation at equal compute on the cost clock: baseline, adaptive-variance and adaptive-progress.

Each arm trains the same one-step generator (one per seed: the seed sets the initialization and every draw)
until it has spent the baseline's budget on a :class:`~carv_adapt.bench.cost_clock.CostClock` calibrated once,
in isolation, on this machine (:func:`~carv_adapt.bench.cost_clock.calibrate_distill`; docs/theory.md §3, §7.1),
so the comparison does not depend on a neighbour's load. The generator is scored at fixed fractions of that
budget by the workload's Frechet distance to the real digits (FD, lower is better) and the classifier's accuracy
on class-conditional samples. The arms: ``baseline`` (``K = 1``, uniform, i.i.d.); the demo's controller
(:func:`~carv_adapt.demo.demo_controller`) with ``objective="variance"`` and with ``objective="progress"`` (§13),
each deciding on the clock's costs (:class:`~carv_adapt.bench.cost_clock.ClockedController`); and
``baseline_reseeded``, the baseline with other timestep and noise draws, whose paired difference to the baseline
is the noise floor a per-seed comparison has to clear.

    python benchmarks/distill_ttq.py --out docs/bench/distill_ttq.json    # --quick: a smoke test
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from carv_adapt.bench.cost_clock import ClockedController, CostClock, calibrate_distill, machine_description, run_counts

__all__ = ["DISTILL_ARMS", "DistillTTQSettings", "distill_ttq", "distill_table", "merge_results", "analyze"]

DISTILL_ARMS = ("baseline", "baseline_reseeded", "adaptive_variance", "adaptive_progress")
# The noise floor: the baseline again with only its timestep and noise draws reseeded (same initialization and
# generator inputs). Its paired difference to the baseline is what a difference of no effect looks like.
_RESEED = 7919


@dataclass(frozen=True)
class DistillTTQSettings:
    """What :func:`distill_ttq` runs.

    Attributes:
        steps: the baseline's training steps; their cost-clock compute is every arm's budget.
        seeds: one generator per seed (initialization and draws), shared by the arms.
        fractions: budget fractions at which every arm is scored (1.0: equal compute).
        n_per_class: class-conditional samples per digit for FD and accuracy.
        calibration_reps: timed calls per stage and batch size of the cost clock.
        quick: tiny sizes (a smoke test, not a measurement).
    """

    steps: int = 150
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    arms: tuple[str, ...] = DISTILL_ARMS
    n_per_class: int = 20
    calibration_reps: int = 5
    quick: bool = False

    def __post_init__(self) -> None:
        bad = [a for a in self.arms if a not in DISTILL_ARMS]
        if bad or "baseline" not in self.arms:
            raise ValueError(f"arms must include 'baseline' and come from {DISTILL_ARMS}, got {self.arms!r}")
        if not self.fractions or max(self.fractions) != 1.0:
            raise ValueError(f"fractions must end at 1.0 (equal compute), got {self.fractions!r}")


def _scorers(wl: Any, n_per_class: int) -> dict[str, Callable[[Any], float]]:
    """FD and accuracy of a generator from one pass over its samples (the two scorers share it)."""
    memo: dict[str, Any] = {"gen": None}

    def quality(gen: Any) -> dict[str, float]:
        if memo["gen"] is not gen:
            memo.update(gen=gen, q=wl.quality(gen, n_per_class=n_per_class))
        return memo["q"]

    return {"fd": lambda gen: quality(gen)["fd"], "accuracy": lambda gen: quality(gen)["accuracy"]}


def _run_row(arm: str, seed: int, run: Any, wall: float, clock: CostClock) -> dict[str, Any]:
    return {
        "arm": arm,
        "seed": seed,
        **run_counts(run, clock),
        "run_wall_seconds": wall,
        "exhausted": run.exhausted,
        "refits": [{"step": r.step, "K": r.K, "reason": r.reason} for r in run.history],
        "curve": [
            {"fraction": c.fraction, "step": c.step, "compute": c.compute, "wall": c.wall, **c.scores}
            for c in run.checkpoints
        ],
    }


def _reseeded(a: Any) -> Any:
    """The baseline policy of adapter ``a``'s workload with its sampler seed moved by ``_RESEED``."""
    from carv_adapt.workloads.base import default_policy

    c = a.wl.config
    return default_policy(a.wl.teacher, c.model_copy(update={"seed": c.seed + _RESEED}))


def _at(row: dict[str, Any], fraction: float, metric: str) -> float:
    return next(c[metric] for c in row["curve"] if abs(c["fraction"] - fraction) < 1e-9)


def analyze(runs: list[dict[str, Any]], s: DistillTTQSettings) -> dict[str, Any]:
    """Per arm and fraction: FD and accuracy per seed with their mean and a 95 % interval over seeds; per
    adaptive arm, the paired FD difference to the baseline per seed and whether it is never worse."""
    from carv_adapt.bench.ttq_analysis import interval

    by = {(r["arm"], r["seed"]): r for r in runs}
    out: dict[str, Any] = {"arms": {}}
    for arm in s.arms:
        per_f = {}
        for f in s.fractions:
            fd = [_at(by[arm, sd], f, "fd") for sd in s.seeds]
            acc = [_at(by[arm, sd], f, "accuracy") for sd in s.seeds]
            row: dict[str, Any] = {
                "fd": fd,
                "fd_interval": interval(fd),
                "accuracy": acc,
                "acc_interval": interval(acc),
            }
            if arm != "baseline":
                diff = [a - _at(by["baseline", sd], f, "fd") for sd, a in zip(s.seeds, fd)]
                row.update(fd_minus_baseline=diff, diff_interval=interval(diff), never_worse=all(d <= 0 for d in diff))
            per_f[f"{f:g}"] = row
        out["arms"][arm] = per_f
    return out


def distill_table(result: dict[str, Any]) -> str:
    """Markdown: FD per seed and arm at each compute fraction, the mean, and the paired difference to baseline."""
    s = result["settings"]
    seeds = s["seeds"]
    lines = [
        "| compute | arm | "
        + " | ".join(f"FD seed {sd}" for sd in seeds)
        + " | mean FD [95 %] | acc | FD - baseline |",
        "|---|---|" + "---|" * len(seeds) + "---|---|---|",
    ]
    for f in s["fractions"]:
        for arm in s["arms"]:
            r = result["analysis"]["arms"][arm][f"{f:g}"]
            iv = r["fd_interval"]
            ci = (
                f"{iv['mean']:.1f} [{iv['lo']:.1f}, {iv['hi']:.1f}]" if math.isfinite(iv["lo"]) else f"{iv['mean']:.1f}"
            )
            diff = "-"
            if "diff_interval" in r:
                d = r["diff_interval"]
                diff = f"{d['mean']:+.1f}" + (f" [{d['lo']:+.1f}, {d['hi']:+.1f}]" if math.isfinite(d["lo"]) else "")
                diff += (
                    " (never worse)"
                    if r["never_worse"]
                    else f" (worse in {sum(x > 0 for x in r['fd_minus_baseline'])})"
                )
            cells = " | ".join(f"{v:.1f}" for v in r["fd"])
            lines.append(f"| {f:.0%} | {arm} | {cells} | {ci} | {r['acc_interval']['mean']:.2f} | {diff} |")
    return "\n".join(lines)


def distill_ttq(
    s: DistillTTQSettings,
    progress: Callable[[str], None] | None = None,
    on_seed: Callable[[dict[str, Any]], None] | None = None,
    calibration: tuple[CostClock, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-ready dict (settings, clock, per-run curves, analysis). ``on_seed`` gets
    the result over the seeds finished so far after each seed (e.g. to write it, so a long run keeps its part).
    ``calibration``: a clock and its raw medians from an earlier run on this machine, so that seeds run in separate
    processes share one clock (and one budget) and their results merge (:func:`merge_results`)."""
    from carv_adapt.adapters import build_adapter
    from carv_adapt.demo import demo_controller

    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    a0 = build_adapter("distill", s.seeds[0], s.quick)
    if calibration is None:
        say("calibrating the cost clock (each stage in isolation)")
        calibration = calibrate_distill(a0.wl, reps=s.calibration_reps)
    clock, raw = calibration
    budget = s.steps * clock.step_cost(a0.batch_size, 1, False)
    runs = []
    for seed in s.seeds:
        a = build_adapter("distill", seed, s.quick)
        scores = _scorers(a.wl, 5 if s.quick else s.n_per_class)
        for arm in s.arms:
            say(f"seed {seed}: {arm}")
            ctrl = (
                None
                if arm.startswith("baseline")
                else ClockedController(
                    demo_controller(a, s.steps, seed, objective=arm.removeprefix("adaptive_")), clock
                )
            )  # the controller decides on the costs it is charged
            pol = _reseeded(a) if arm == "baseline_reseeded" else None
            t0 = time.perf_counter()
            run = a.wl.run_to_compute(
                clock.step_cost, budget, s.fractions, scores, controller=ctrl, policy=pol, max_steps=8 * s.steps
            )
            runs.append(_run_row(arm, seed, run, time.perf_counter() - t0, clock))
        if on_seed is not None:
            on_seed(_result(s, a0, clock, raw, budget, runs, t_start))
    return _result(s, a0, clock, raw, budget, runs, t_start)


def _result(
    s: DistillTTQSettings, a0: Any, clock: CostClock, raw: dict, budget: float, runs: list, t_start: float
) -> dict[str, Any]:
    done = tuple(dict.fromkeys(r["seed"] for r in runs))
    s = replace(s, seeds=done)
    result: dict[str, Any] = {
        "command": "python benchmarks/distill_ttq.py " + " ".join(sys.argv[1:]),
        "machine": machine_description(),
        "settings": asdict(s),
        "workload_config": a0.wl.config.model_dump(),
        "clock": clock.to_dict(),
        "calibration": raw,
        "budget": budget,
        "baseline_step_cost": clock.step_cost(a0.batch_size, 1, False),
        "runs": runs,
    }
    result["analysis"] = analyze(runs, s)
    result["wall_seconds"] = time.perf_counter() - t_start
    return result


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs over disjoint seeds that share a clock, a budget and settings (seeds aside)."""
    first = results[0]
    for r in results[1:]:
        if r["clock"] != first["clock"] or r["budget"] != first["budget"]:
            raise ValueError("results to merge must share one cost clock and budget (pass --clock to each run)")
    runs = sorted((run for r in results for run in r["runs"]), key=lambda run: run["seed"])
    seeds = tuple(dict.fromkeys(run["seed"] for run in runs))
    if len(runs) != sum(len(r["runs"]) for r in results) or len(seeds) * len(first["settings"]["arms"]) != len(runs):
        raise ValueError(f"results to merge must cover disjoint seeds with every arm, got seeds {seeds}")
    settings = {**first["settings"], "seeds": list(seeds)}
    s = DistillTTQSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    merged = {**first, "settings": asdict(s), "runs": runs, "analysis": analyze(runs, s)}
    merged["wall_seconds"] = max(r["wall_seconds"] for r in results)
    merged["merged_from"] = [r["command"] for r in results]
    return merged


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/distill_ttq.py --out FILE [--steps S] [--seeds N] [--quick]``."""
    import argparse

    p = argparse.ArgumentParser(prog="benchmarks/distill_ttq.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="distill_ttq.json")
    p.add_argument("--steps", type=int, default=150, help="the baseline's steps; its compute is every arm's budget")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    p.add_argument("--seed-list", default=None, help="comma-separated seeds (instead of --seeds)")
    p.add_argument("--clock", default=None, help="a result JSON whose cost clock to reuse instead of calibrating")
    p.add_argument("--merge", nargs="+", default=None, help="merge these result JSONs (same clock) into --out")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.merge:
        result = merge_results([json.loads(Path(f).read_text()) for f in args.merge])
        s = DistillTTQSettings(steps=result["settings"]["steps"])
    else:
        seeds = tuple(int(x) for x in args.seed_list.split(",")) if args.seed_list else tuple(range(args.seeds))
        s = DistillTTQSettings(steps=args.steps, seeds=seeds, quick=args.quick)
        prior = json.loads(Path(args.clock).read_text()) if args.clock else None
        result = distill_ttq(
            s,
            progress=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True),
            on_seed=lambda r: out.write_text(json.dumps(r, indent=1)),
            calibration=None if prior is None else (CostClock.from_dict(prior["clock"]), prior["calibration"]),
        )
    out.write_text(json.dumps(result, indent=1))
    c = result["clock"]
    print(
        f"cost clock: a step costs {1e3 * c['c_0']:.1f} + N ({1e3 * c['c_out']:.1f} + K {1e3 * c['c_in']:.2f}) ms; "
        f"budget {result['budget']:.1f} s = {s.steps} baseline steps"
    )
    print(distill_table(result))
    print(f"wrote {args.out} in {result['wall_seconds'] / 60:.1f} min")
    return 0
