"""The diffusion-head workload at equal compute: K = 1, the hard-coded K = 4, improved-diffusion's resampler at K = 4,
and the adaptive controller (variance and progress objectives), over seeds, on a cost clock (docs/theory.md §3, §16).

Every arm trains the condition network and the head from the same initialisation for the same cost-clock budget
(the K = 1 arm's ``steps`` steps) and is scored at fractions of it: the validation diffusion loss (the training
objective on held-out digits), and at the end the classifier accuracy and the Frechet distance of samples. A pilot
at the K = 4 arm's final parameters gives the ``K*`` the variance model prescribes, to set against the ``K`` the
controller chose.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from carv_adapt.bench.cost_clock import (
    ClockedController,
    CostClock,
    clock_from_medians,
    config_key,
    machine_description,
    median_seconds,
)
from carv_adapt.bench.iddpm import LossSecondMomentResampler
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.plan import Plan
from carv_adapt.proposals import TargetMeasure, UniformProposal

__all__ = [
    "HeadBenchSettings",
    "calibrate_head",
    "cached_head_calibration",
    "IddpmPolicy",
    "head_controller",
    "run_head_bench",
    "pilot_k_stars",
    "ARMS",
]

ARMS = ("K=1", "K=4", "iddpm K=4", "adaptive (variance)", "adaptive (progress)")


@dataclass(frozen=True)
class HeadBenchSettings:
    """What :func:`run_head_bench` runs; ``steps`` K = 1 steps set the budget every arm gets."""

    steps: int = 800
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 16
    k_max: int = 32
    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    calibration_reps: int = 7
    pilot_outer: int = 32
    pilot_inner: int = 8
    n_per_class: int = 20
    quick: bool = False


def calibrate_head(wl: Any, N: int, outer_Ns: Sequence[int] = (4, 8, 16), inner_NKs: Sequence[int] = (16, 64, 256),
                   reps: int = 7, seed: int = 0) -> tuple[CostClock, dict[str, Any]]:  # fmt: skip
    """The cost clock of a :class:`~carv_adapt.workloads.diffusion_head.DiffusionHeadWorkload`, each stage timed in
    isolation on fresh models: outer = the condition network's forward, backward and Adam step for ``N`` examples;
    inner = the head's forward and backward (to its parameters and ``z``) and its Adam step for ``N K`` draws; probe
    = the workload's per-example split-half probe at ``K = 2`` (fitted as ``p_0 + N p_out + N^2 p_quad``)."""
    from carv_adapt.workloads.diffusion_head import X_DIM, to_patches

    g = torch.Generator().manual_seed(seed)
    m = wl.new_models()
    opt_c, opt_h = torch.optim.Adam(m.cond.parameters()), torch.optim.Adam(m.head.parameters())
    head_params = list(m.head.parameters())
    T = wl.teacher.num_timesteps

    def outer(n: int) -> None:
        x0, mask, y = wl.outer_batch(n, g)
        opt_c.zero_grad(set_to_none=True)
        m.cond(to_patches(x0), mask, y).backward(torch.randn(n, wl.config.dim, generator=g) * 1e-3)
        opt_c.step()

    def inner(nk: int) -> Callable[[], None]:
        x0, _, _ = wl.outer_batch(1, g)
        z = torch.randn(1, wl.config.dim, generator=g, requires_grad=True)
        t = torch.randint(0, T, (1, nk), generator=g)
        eps = torch.randn(1, nk, X_DIM, generator=g)

        def fn() -> None:
            d = wl.head_losses(m, x0, z, t, eps)
            opt_h.zero_grad(set_to_none=True)
            grads = torch.autograd.grad(d.loss.mean(), head_params + [d.z_rep, d.pred])
            for p, q in zip(head_params, grads):
                p.grad = q
            opt_h.step()

        return fn

    def probe(n: int) -> Callable[[], Any]:
        x0, mask, y = wl.outer_batch(n, g)
        t = torch.randint(0, T, (n, 2), generator=g)
        plan = Plan(step=0, N=n, K=2, t=t, rho=torch.ones(n, 2, dtype=torch.float64), noise_seed=seed)
        return lambda: wl.probe(m, x0, mask, y, plan, plan.noise((X_DIM,)), g)

    out_t = {n: median_seconds(lambda n=n: outer(n), reps) for n in outer_Ns}
    in_t = {nk: median_seconds(inner(nk), reps) for nk in inner_NKs}
    pr_t = {n: median_seconds(probe(n), reps) for n in outer_Ns}
    clock, raw = clock_from_medians(out_t, in_t, pr_t, reps)
    return clock, {**raw, "machine": machine_description()}


def cached_head_calibration(
    wl: Any, path: Any, reps: int, say: Callable[[str], None] | None = None
) -> tuple[CostClock, dict[str, Any]]:
    """:func:`calibrate_head` read from the JSON file ``path`` when it was made for the same config (seed aside),
    machine and ``reps``, else calibrated and written there; the raw medians say ``cached``."""
    import json
    from pathlib import Path

    path = Path(path)
    cfg = {k: v for k, v in wl.config.model_dump().items() if k != "seed"}
    key = config_key({"config": cfg, "machine": machine_description(), "reps": reps, "clock": "diffusion_head/1"})
    if path.exists():
        d = json.loads(path.read_text())
        if d.get("key") == key:
            return CostClock.from_dict(d["clock"]), {**d["raw"], "cached": True}
    if say is not None:
        say("calibrating the cost clock (each stage in isolation)")
    clock, raw = calibrate_head(wl, wl.config.batch_size, reps=reps)
    path.write_text(json.dumps({"key": key, "machine": machine_description(), "clock": clock.to_dict(), "raw": raw}))
    return clock, {**raw, "cached": False}


class IddpmPolicy:
    """improved-diffusion's loss-second-moment resampler as a fixed-``K`` policy: plans draw from its current
    proposal; :meth:`hook` (the workload's ``loss_hook``) records each step's per-draw losses."""

    def __init__(self, target: TargetMeasure, N: int, K: int, seed: int) -> None:
        self.resampler = LossSecondMomentResampler(target)
        self.est = HierarchicalEstimator(UniformProposal(target), N=N, K=K, stratification="iid", seed=seed)
        self.warm_step: int | None = None

    def plan(self) -> Plan:
        self.est.proposal = self.resampler.proposal()
        if self.warm_step is None and self.resampler.warmed_up:
            self.warm_step = self.est._step
        return self.est.plan()

    def hook(self, plan: Plan, losses: torch.Tensor) -> None:
        self.resampler.update(plan.t, losses)


def head_controller(wl: Any, s: HeadBenchSettings, seed: int, objective: str, n_steps: int) -> Any:
    """The adaptive controller of the bench: parameter-space statistics from the split-half probe over both
    networks, uniform warm-up for a sixth of the K = 1 step count, a refit every twentieth, ``K <= k_max``."""
    from carv_adapt.controller import AdaptiveController

    c = wl.config
    return AdaptiveController(
        num_timesteps=wl.teacher.num_timesteps, t_min=c.t_min, t_max=c.t_max, batch_size=s.batch_size,
        warmup_steps=max(4, n_steps // 6), refit_every=max(2, n_steps // 20), k_max=s.k_max, forgetting=0.97,
        seed=seed, space="parameter", objective=objective,
    )  # fmt: skip


def _interval(xs: Sequence[float]) -> dict[str, float]:
    """Mean and the 95 % Student-t interval over seeds."""
    from scipy.stats import t as student

    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    h = float(student.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - h, "hi": mean + h}


def pilot_k_stars(sigma_b2: float, sigma_w2: float, clock: CostClock, N: int) -> dict[str, float]:
    """The continuous ``K*`` of docs/theory.md §4 from a pilot's variances and the clock, two ways: with the
    per-step ``c_0`` spread over the ``N`` outer draws (``c_out + c_0 / N``: at a fixed ``N`` the step's fixed cost is
    paid once per outer batch, as the pilot's :meth:`~carv_adapt.bench.pilot.PilotStats.best_K` counts it) and with
    ``c_0`` left out (§4's ``W``)."""
    from carv_adapt.allocation import k_star_continuous

    if not sigma_b2 > 0:
        return {"K_star_continuous": math.inf, "K_star_continuous_no_c0": math.inf}
    return {
        "K_star_continuous": k_star_continuous(sigma_b2, sigma_w2, clock.c_out + clock.c_0 / N, clock.c_in),
        "K_star_continuous_no_c0": k_star_continuous(sigma_b2, sigma_w2, clock.c_out, clock.c_in),
    }


def _pilot(wl: Any, state: dict, s: HeadBenchSettings, clock: CostClock, seed: int) -> dict[str, Any]:
    """The variance model at frozen parameters: final-space per-draw gradients of both networks, ``K*`` under the
    clock's costs (docs/theory.md §4)."""
    from carv_adapt.bench.pilot import EstimateCost, run_pilot

    m = wl.models_from_state(state)
    g = torch.Generator().manual_seed(seed + 5)
    target = TargetMeasure(wl.teacher.num_timesteps, wl.config.t_min, wl.config.t_max)
    N = s.batch_size
    cost = EstimateCost(a=clock.c_0 + N * clock.c_out, b=N * clock.c_in, N=N)
    pilot = run_pilot(lambda plan, final: wl.per_draw_gradients(m, plan, g), target, s.pilot_outer, s.pilot_inner,
                      10, cost, seed=seed + 6)  # fmt: skip
    return {
        "sigma_b2": pilot.sigma_b2,
        "sigma_w2": pilot.sigma_w2,
        **pilot_k_stars(pilot.sigma_b2, pilot.sigma_w2, clock, N),
        "K_star": pilot.best_K(pilot.pi_b, s.k_max),
        "ecm_K_star_vs_K4": pilot.W(pilot.pi_b, 4) / pilot.W(pilot.pi_b, pilot.best_K(pilot.pi_b, s.k_max)),
        "draws": pilot.draws,
    }


def run_head_bench(s: HeadBenchSettings, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Calibrate the clock, run every arm of :data:`ARMS` for every seed at equal cost-clock compute, pilot ``K*``
    at each seed's K = 4 final parameters; returns a JSON-ready dict."""
    from carv_adapt.workloads.diffusion_head import DiffusionHeadConfig, DiffusionHeadWorkload

    say = progress or (lambda msg: None)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    say("calibrating the cost clock")
    wl0 = DiffusionHeadWorkload(DiffusionHeadConfig(batch_size=s.batch_size))
    clock, raw = calibrate_head(wl0, s.batch_size, reps=s.calibration_reps)
    budget = s.steps * clock.step_cost(s.batch_size, 1)
    runs: list[dict[str, Any]] = []
    for seed in s.seeds:
        wl = DiffusionHeadWorkload(DiffusionHeadConfig(batch_size=s.batch_size, seed=seed))
        target = TargetMeasure(wl.teacher.num_timesteps, wl.config.t_min, wl.config.t_max)
        held: dict[str, Any] = {"models": None, "scores": None}

        def quality(m: Any, key: str, wl: Any = wl, held: dict = held) -> float:
            if held["models"] is not m:  # one sampling pass per checkpoint serves all three scores
                held.update(models=m, scores=wl.quality(m, s.n_per_class))
            return held["scores"][key]

        scores = {k: (lambda m, k=k: quality(m, k)) for k in ("val_loss", "fd", "accuracy")}
        for arm in ARMS:
            say(f"seed {seed}: {arm}")
            kw: dict[str, Any] = {}
            ctrl = None
            if arm in ("K=1", "K=4"):
                K = 1 if arm == "K=1" else 4
                kw["policy"] = HierarchicalEstimator(UniformProposal(target), N=s.batch_size, K=K,
                                                     stratification="iid", seed=seed + 100)  # fmt: skip
            elif arm == "iddpm K=4":
                iddpm = IddpmPolicy(target, s.batch_size, 4, seed + 100)
                kw.update(policy=iddpm, loss_hook=iddpm.hook)
            else:
                obj = "variance" if "variance" in arm else "progress"
                ctrl = head_controller(wl, s, seed, obj, s.steps)
                kw["controller"] = ClockedController(ctrl, clock)  # decides on the costs it is charged
            t0 = time.perf_counter()
            r = wl.run_to_compute(clock.step_cost, budget, s.fractions, scores, max_steps=8 * s.steps, **kw)
            wall = time.perf_counter() - t0
            counted = r.records[: r.checkpoints[-1].step]
            nk = sum(x.N * x.K for x in counted)
            row = {
                "seed": seed,
                "arm": arm,
                "steps": len(counted),
                "compute": r.checkpoints[-1].compute,
                "mean_K": nk / max(sum(x.N for x in counted), 1),
                "final_K": counted[-1].K if counted else None,
                "probes": int(sum(r.probed[: len(counted)])),
                "curve": [{"fraction": c.fraction, "compute": c.compute, **c.scores} for c in r.checkpoints],
                "final": dict(r.checkpoints[-1].scores),
                "wall_s": wall,
            }
            if arm == "iddpm K=4":
                row["iddpm_warm_step"] = iddpm.warm_step
            if ctrl is not None and ctrl.history:
                last = ctrl.history[-1]
                row["controller"] = {"K": last.K, "sigma_b2": last.sigma_b2, "sigma_w2": last.sigma_w2,
                                     "c_out": last.c_out, "c_in": last.c_in, "refits": len(ctrl.history),
                                     "K_path": [h.K for h in ctrl.history]}  # fmt: skip
            if arm == "K=4":
                say(f"seed {seed}: pilot at the K=4 final parameters")
                row["pilot"] = _pilot(wl, r.final_state, s, clock, seed)
            runs.append(row)
    return {
        "workload": "diffusion_head",
        "settings": asdict(s),
        "clock": {**clock.to_dict(), "raw": raw},
        "budget": budget,
        "runs": runs,
        "summary": summarize(runs, s.seeds),
        "wall_seconds": time.perf_counter() - t_start,
        "cpu_seconds": time.process_time() - cpu_start,
    }


def summarize(runs: list[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Per arm: final scores with 95 % intervals over seeds; per adaptive arm the paired difference to K = 4."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    out: dict[str, Any] = {}
    for arm in ARMS:
        rows = [by[(arm, sd)] for sd in seeds if (arm, sd) in by]
        if not rows:
            continue
        out[arm] = {k: _interval([r["final"][k] for r in rows]) for k in ("val_loss", "fd", "accuracy")}
        out[arm]["mean_K"] = _interval([r["mean_K"] for r in rows])
        out[arm]["steps"] = _interval([float(r["steps"]) for r in rows])
        # The val loss averaged over the curve's checkpoints after the first: the area under the loss curve.
        out[arm]["val_loss_auc"] = _interval(
            [sum(c["val_loss"] for c in r["curve"][1:]) / max(len(r["curve"]) - 1, 1) for r in rows]
        )
        if arm != "K=4" and all(("K=4", sd) in by for sd in seeds):
            out[arm]["minus_K4"] = {
                k: _interval(
                    [by[(arm, sd)]["final"][k] - by[("K=4", sd)]["final"][k] for sd in seeds if (arm, sd) in by]
                )
                for k in ("val_loss", "fd", "accuracy")
            }
    return out
