"""The ECM ablation of one workload at early / middle / late checkpoints of an adaptive training run (theory.md §10).

At every checkpoint the parameters are frozen and seven policies are measured side by side (interleaved
replications, same estimate function): the baseline, improved-diffusion's resampler, reuse only, + IS,
+ stratification, the adaptive controller as it stood at that step of the run, and the brute-force oracle; where
the workload ships a control variate (SDS-3D), "+CV" after "+ stratification": the same policy with the control,
its per-bin coefficients fitted on an output-space pilot at the checkpoint (docs/theory.md §14); where
the workload places its outer draws by the plan's outer uniforms, also "+outer": the "+strat" policy with
stratified and with antithetic outer draws (docs/theory.md §15), the better of the two measured.
``K`` and the proposal of the middle three and of the oracle come from a long pilot at the checkpoint
(final-space statistics, :mod:`carv_adapt.bench.pilot`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from carv_adapt.adapters import WorkloadAdapter, build_adapter
from carv_adapt.bench.cv import control_variate_pilot, paired_cv
from carv_adapt.bench.iddpm import LossSecondMomentResampler
from carv_adapt.bench.pilot import EstimateCost, PilotStats, brute_force_oracle, fit_estimate_cost, run_pilot
from carv_adapt.bench.replicate import Replications, ecm_interval, replicate
from carv_adapt.demo import demo_controller
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.plan import Plan, resolve_stratification
from carv_adapt.proposals import BinnedProposal, TargetMeasure, UniformProposal, teacher_weight_proposal
from carv_adapt.proposals.base import Proposal, bin_sums

__all__ = ["AblationSettings", "TimedController", "ablate", "fill_iddpm", "pilot_at", "policy_estimator", "VARIANTS"]

VARIANTS = ("baseline", "iddpm", "reuse", "+IS", "+strat", "+outer", "adaptive", "oracle")
OUTER_DESIGNS = ("stratified", "antithetic")  # the outer designs "+outer" is the better of
_ESTIMATE_STAGES = ("upstream", "teacher", "backward", "probe")  # what estimate() itself runs, or controller cost


@dataclass(frozen=True)
class AblationSettings:
    """Sizes of one workload's ablation (see :func:`ablate`)."""

    steps: int
    seed: int = 0
    checkpoints: tuple[float, ...] = (0.25, 0.5, 1.0)
    replications: int = 40
    ratio_replications: int = 4  # adaptive and oracle get this many times `replications`: the targets judge their ratio
    pilot_outer: int = 48
    pilot_inner: int = 16
    cost_Ks: tuple[int, ...] = (1, 4, 16, 32)
    cost_reps: int = 3
    iddpm_history: int = 10
    iddpm_uniform_prob: float = 0.001
    k_max: int = 64  # the uncapped oracle's range; every measured policy gets min(k_max, controller's k_max)
    num_bins: int = 20
    quick: bool = False
    control_variate: bool = True  # measure "+CV" where the workload ships a control variate (docs/theory.md §14)
    cv_pilot_outer: int = 48  # outer draws of the output-space pilot that fits the "+CV" coefficients
    config: dict[str, Any] = field(default_factory=dict)  # workload config overrides (e.g. 360-degree cameras)
    teacher: str | None = None  # sds3d: a shipped teacher's name or a diffusers folder (teachers.load)


class TimedController:
    """Wraps a controller and accumulates the wall time of its ``plan`` / ``observe`` / ``step`` calls (refits
    run inside ``step``); everything else is delegated."""

    def __init__(self, controller: Any) -> None:
        self._c = controller
        self.seconds = {"plan": 0.0, "observe": 0.0, "step": 0.0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)

    def _timed(self, name: str, fn: Any, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        self.seconds[name] += time.perf_counter() - t0
        return out

    def plan(self) -> Plan:
        return self._timed("plan", self._c.plan)

    def observe(self, *args: Any, **kw: Any) -> None:
        self._timed("observe", self._c.observe, *args, **kw)

    def step(self) -> None:
        self._timed("step", self._c.step)


def fill_iddpm(
    draws: Any, target: TargetMeasure, history: int, uniform_prob: float, inner: int, seed: int
) -> tuple[LossSecondMomentResampler, float]:
    """A fully warmed-up resampler at frozen parameters: ``history`` losses for every timestep of the support,
    from output-space norms ``||f||`` (timesteps in random order, ``inner`` per outer draw). Returns it and the
    seconds the fill took (compute the resampler needs before it leaves the uniform distribution)."""
    res = LossSecondMomentResampler(target, history, uniform_prob)
    g = torch.Generator().manual_seed(seed)
    ts = res.support.repeat(history)
    ts = ts[torch.randperm(ts.numel(), generator=g)]
    pad = (-ts.numel()) % inner
    ts = torch.cat([ts, ts[:pad]]) if pad else ts
    rows = ts.reshape(-1, inner)
    t0 = time.perf_counter()
    for i in range(0, rows.shape[0], 4):
        t = rows[i : i + 4]
        plan = Plan(
            step=i,
            N=t.shape[0],
            K=inner,
            t=t,
            rho=torch.ones(t.shape, dtype=torch.float64),
            noise_seed=int(torch.randint(0, 2**62, (1,), generator=g)),
        )
        _, norms = draws(plan, False)
        res.update(t, norms.detach())
    return res, time.perf_counter() - t0


def policy_estimator(
    proposal: Proposal, N: int, K: int, strat: str, seed: int, outer: str = "iid"
) -> HierarchicalEstimator:
    return HierarchicalEstimator(
        proposal, N=N, K=K, stratification=resolve_stratification(strat, K), outer=outer, seed=seed
    )


def _policy_row(
    name: str, pol: HierarchicalEstimator, rep: Replications, base: Replications, W_pred: float, kind: str, seed: int
) -> dict[str, Any]:
    e, lo, hi = ecm_interval(base, rep, seed=seed) if name != "baseline" else (1.0, 1.0, 1.0)
    return {
        "variant": name,
        "N": pol.N,
        "K": pol.K,
        "proposal": kind,
        "stratification": pol.stratification,
        "variance": rep.variance,
        "variance_rel_se": rep.relative_se,
        "replications": rep.R,
        "seconds_per_estimate": rep.seconds_per_estimate,
        "W": rep.W,
        "W_predicted": W_pred,
        "ecm": e,
        "ecm_ci90": [lo, hi],
    }


def pilot_at(
    a: WorkloadAdapter,
    state: dict,
    outer: int,
    inner: int,
    num_bins: int,
    cost_Ks: tuple[int, ...],
    cost_reps: int,
    seed: int,
    fixed_seconds: float = 0.0,
) -> tuple[TargetMeasure, Any, Any, PilotStats]:
    """A workload's target, estimate and per-draw functions at frozen ``state``, and its pilot statistics:
    the estimate's cost fitted from timed estimates (plus ``fixed_seconds`` per estimate), then
    ``outer x inner`` final-space draws; the teacher-weight prior rides along where the workload declares it."""
    c = a.wl.config
    target = TargetMeasure(a.wl.teacher.num_timesteps, c.t_min, c.t_max)
    estimate, draws = a.estimator(state), a.draws(state)
    cost = fit_estimate_cost(estimate, target, a.batch_size, cost_Ks, cost_reps, seed=seed)
    cost = EstimateCost(a=cost.a + fixed_seconds, b=cost.b, N=cost.N)
    prior_b = (
        bin_sums(
            teacher_weight_proposal(target, a.weight, a.wl.teacher.alphas_cumprod).pmf(), target.bin_edges(num_bins)
        )
        if a.sds_prior
        else None
    )
    pilot = run_pilot(draws, target, outer, inner, num_bins, cost, seed=seed + 1, prior_b=prior_b)
    return target, estimate, draws, pilot


def _checkpoint(
    a: WorkloadAdapter,
    s: AblationSettings,
    state: dict,
    ctrl_view: dict[str, Any],
    seed: int,
    k_max: int,
    fixed_seconds: float,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    target, estimate, draws, pilot = pilot_at(
        a, state, s.pilot_outer, s.pilot_inner, s.num_bins, s.cost_Ks, s.cost_reps, seed, fixed_seconds
    )
    edges = pilot.edges
    pilot_seconds = time.perf_counter() - t0
    iddpm, fill_seconds = fill_iddpm(draws, target, s.iddpm_history, s.iddpm_uniform_prob, 64, seed + 2)

    N = a.batch_size
    K_u = pilot.best_K(pilot.pi_b, k_max)
    p_carv = pilot.carv_proposal()
    K_is = pilot.best_K(p_carv, k_max)
    oracle = brute_force_oracle(pilot, k_max)
    uncapped = brute_force_oracle(pilot, s.k_max)
    uniform = UniformProposal(target)
    carv = BinnedProposal(target, edges, p_carv)
    pols: dict[str, tuple[HierarchicalEstimator, float, str]] = {
        "baseline": (policy_estimator(uniform, N, 1, "iid", seed + 10), pilot.W(pilot.pi_b, 1), "uniform"),
        "iddpm": (
            policy_estimator(iddpm.proposal(), N, 1, "iid", seed + 11),
            pilot.W(bin_sums(iddpm.proposal().pmf(), edges), 1),
            "loss 2nd moment" if iddpm.warmed_up else "uniform (not warmed up)",
        ),
        "reuse": (policy_estimator(uniform, N, K_u, "iid", seed + 12), pilot.W(pilot.pi_b, K_u), "uniform"),
        "+IS": (policy_estimator(carv, N, K_is, "iid", seed + 13), pilot.W(p_carv, K_is), "p* (alpha 0.1)"),
        "+strat": (policy_estimator(carv, N, K_is, "stratified", seed + 14), pilot.W(p_carv, K_is), "p* (alpha 0.1)"),
        "adaptive": (
            policy_estimator(ctrl_view["proposal"], N, ctrl_view["K"], ctrl_view["stratification"], seed + 15),
            pilot.W(bin_sums(ctrl_view["proposal"].pmf(), edges), ctrl_view["K"]),
            ctrl_view["kind"],
        ),
        "oracle": (
            policy_estimator(BinnedProposal(target, edges, oracle.p_b), N, oracle.K, "stratified", seed + 16),
            oracle.W,
            oracle.name,
        ),
    }
    cv = None
    if s.control_variate and a.cv_estimator is not None and a.cv_draws is not None:
        cv = control_variate_pilot(
            a.cv_draws, state, s.cv_pilot_outer, carv, N, K_is, edges, pilot.pi_b, p_carv, seed + 17
        )
        estimate = a.cv_estimator(state)  # applies the control only to plans that carry coefficients
        items = list(pols.items())
        at = [k for k, _ in items].index("+strat") + 1
        # Predicted: the final-space within variance less the output-space share the pilot saw removed (the
        # surrogate's own cost is not in the pilot's cost model; the measured W includes it).
        keep, n_ = 1.0 - cv[1]["share_of_second_moment_removed"], pilot.cost.N
        w_cv = max(pilot.sigma_b2, 0.0) / n_ + pilot.sigma_w2_for(p_carv) * keep / (n_ * K_is)
        w_cv *= pilot.cost.seconds(K_is)
        pols = dict(items[:at] + [("+CV", (cv[0], w_cv, "p* (alpha 0.1) + Gaussian CV"))] + items[at:])
    if a.outer_designs and N >= 2:
        # The pilot draws i.i.d. outer draws, so it predicts no design's W: NaN, kept out of the calibration.
        for j, design in enumerate(OUTER_DESIGNS):
            est = policy_estimator(carv, N, K_is, "stratified", seed + 17 + j, outer=design)
            pols[f"+outer:{design}"] = (est, math.nan, "p* (alpha 0.1)")
    t1 = time.perf_counter()
    ratio_reps = {k: s.ratio_replications * s.replications for k in ("adaptive", "oracle")}
    reps = replicate(estimate, {k: v[0] for k, v in pols.items()}, s.replications, fixed_seconds, counts=ratio_reps)
    measure_seconds = time.perf_counter() - t1
    base = reps["baseline"]
    rows = [_policy_row(k, v[0], reps[k], base, v[1], v[2], seed + 20 + i) for i, (k, v) in enumerate(pols.items())]
    rows, outer = _outer_rows(rows, reps, seed + 40)
    if outer is not None:
        # At "+strat"'s K the between term's share of the estimator variance bounds any outer design's gain:
        # removing it all gives 1 / (1 - share) (docs/theory.md §15.3). Pilot estimates; inner draws i.i.d.
        sw_k = pilot.sigma_w2_for(p_carv) / K_is
        share = pilot.sigma_b2 / (pilot.sigma_b2 + sw_k) if pilot.sigma_b2 + sw_k > 0 else math.nan
        outer.update(K=K_is, between_share=share, gain_bound=1.0 / (1.0 - share) if share < 1 else math.inf)
    extra = {} if cv is None else {"control_variate": {**cv[1], "paired": paired_cv(estimate, cv[0], s.replications)}}
    # W_oracle / W_adaptive with its own interval: both ECMs' replication noise, which a point ratio hides.
    over = ecm_interval(reps["oracle"], reps["adaptive"], seed=seed + 50)
    return {
        **extra,
        "adaptive_over_oracle": {"ratio": over[0], "ci90": [over[1], over[2]]},
        "outer": outer,
        "pilot": _pilot_summary(pilot),
        "iddpm": {
            "history_per_term": s.iddpm_history,
            "uniform_prob": s.iddpm_uniform_prob,
            "warmed_up": iddpm.warmed_up,
            "fill_draws": int(iddpm.counts.sum()),
            "fill_seconds": fill_seconds,
        },
        "controller": {k: v for k, v in ctrl_view.items() if k != "proposal"},
        "k_max": k_max,
        "oracle_uncapped": {
            "k_max": s.k_max,
            "K": uncapped.K,
            "proposal": uncapped.name,
            "predicted_W": uncapped.W,
            "predicted_ecm": pilot.W(pilot.pi_b, 1) / uncapped.W,
        },
        "variants": rows,
        "seconds": {"pilot": pilot_seconds, "iddpm_fill": fill_seconds, "replications": measure_seconds},
    }


def _outer_rows(
    rows: list[dict[str, Any]], reps: dict[str, Replications], seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Fold the per-design rows into one "+outer" row (the design of lower measured W; choosing the better of two
    measured W favours it slightly) placed after "+strat", and a summary: each design's ECM over "+strat" with a
    bootstrap 90 % interval."""
    by = {r["variant"]: r for r in rows}
    designs = [d for d in OUTER_DESIGNS if f"+outer:{d}" in by]
    if not designs:
        return rows, None
    best = min(designs, key=lambda d: by[f"+outer:{d}"]["W"])
    summary: dict[str, Any] = {"chosen": best, "designs": {}}
    for d in designs:
        r = by[f"+outer:{d}"]
        ratio = ecm_interval(reps["+strat"], reps[f"+outer:{d}"], seed=seed)
        summary["designs"][d] = {"ecm": r["ecm"], "ecm_ci90": r["ecm_ci90"], "W": r["W"], "over_strat": list(ratio)}
    kept = [r for r in rows if not r["variant"].startswith("+outer:")]
    row = {**by[f"+outer:{best}"], "variant": "+outer", "outer": best}
    i = next(i for i, r in enumerate(kept) if r["variant"] == "+strat") + 1
    return kept[:i] + [row] + kept[i:], summary


def _pilot_summary(p: PilotStats) -> dict[str, Any]:
    return {
        "draws": p.draws,
        "sigma_b2": p.sigma_b2,
        "sigma_w2": p.sigma_w2,
        "sigma_w2_is": p.sigma_w2_for(p.carv_proposal()),
        "M2": p.M2,
        "ratio_w_b": p.sigma_w2 / p.sigma_b2 if p.sigma_b2 > 0 else math.inf,
        "c_out": p.cost.c_out,
        "c_in": p.cost.c_in,
        "cost_ratio": p.cost.c_out / p.cost.c_in if p.cost.c_in > 0 else math.inf,
        "m_b": p.m_b.tolist(),
        "edges": p.edges.tolist(),
    }


def _controller_view(ctrl: Any) -> dict[str, Any]:
    last = ctrl.history[-1] if ctrl.history else None
    return {
        "step": ctrl.step_count - 1,
        "K": ctrl.K,
        "proposal": ctrl.proposal,
        "kind": f"controller ({ctrl.proposal_kind})",
        "stratification": ctrl.config.policy.stratification,
        "in_warmup": ctrl.in_warmup,
        "refits": len(ctrl.history),
        "predicted_ecm": None if last is None else last.predicted_ecm,
        "predicted_W": None if last is None else last.predicted_W,
        "sigma_b2": None if last is None else last.sigma_b2,
        "sigma_w2": None if last is None else last.sigma_w2,
        "c_0": None if last is None else last.c_0,  # with c_out, c_in: compare N c_out + c_0 to the pilot's a
        "c_out": None if last is None else last.c_out,
        "c_in": None if last is None else last.c_in,
    }


def ablate(workload: str, s: AblationSettings, progress: Any = None) -> dict[str, Any]:
    """Train ``workload`` under the adaptive controller for ``s.steps`` steps, then measure every variant at
    the checkpoints (fractions of the run). Returns a JSON-ready dict."""
    a = build_adapter(workload, s.seed, s.quick, teacher=s.teacher if workload == "sds3d" else None, **s.config)
    ctrl = demo_controller(a, s.steps, s.seed)
    timed = TimedController(ctrl)
    n_planned = a.controller_steps(s.steps)
    steps_at = sorted({max(0, round(f * n_planned) - 1) for f in s.checkpoints})
    views: dict[int, dict[str, Any]] = {}

    def on_step(rec: Any) -> None:
        if rec.step in steps_at:
            views[rec.step] = _controller_view(ctrl)

    t0 = time.perf_counter()
    res = a.run(s.steps, controller=timed, on_step=on_step, snapshot_steps=steps_at)
    train_wall = time.perf_counter() - t0
    n = len(res.records)
    compute = res.compute_seconds
    probe = sum(r.seconds.get("probe", 0.0) for r in res.records)
    ctrl_sec = sum(timed.seconds.values())
    out: dict[str, Any] = {
        "workload": workload,
        "config": a.wl.config.model_dump(),
        "training": {"steps": n, "compute_seconds": compute, "wall_seconds": train_wall},
        "overhead": {
            "plan_s": timed.seconds["plan"],
            "observe_s": timed.seconds["observe"],
            "step_refit_s": timed.seconds["step"],
            # Fractions of the wall time of the training loop (the step time a user sees).
            "controller_fraction": ctrl_sec / train_wall,
            "probe_fraction": probe / train_wall,
            "ms_per_step": 1e3 * train_wall / n,
            "controller_ms_per_step": 1e3 * ctrl_sec / n,
            "refits": len(ctrl.history),
        },
        "checkpoints": [],
    }
    # Stages every training step pays whatever K is (distillation's fake-score update), the probe excepted
    # (a controller cost): charged to every policy's estimate so W is per training step.
    fixed = sum(v for r in res.records for k, v in r.seconds.items() if k not in _ESTIMATE_STAGES) / n
    out["fixed_seconds_per_step"] = fixed
    for i, step in enumerate(steps_at):
        # The attribution teacher is frozen: its result has no parameters to snapshot.
        state = res.snapshots[step] if getattr(res, "snapshots", None) else {}
        if progress is not None:
            progress(f"{workload}: checkpoint {i + 1}/{len(steps_at)} (step {step + 1} of {n})")
        # Every policy gets the K range the controller may use (its memory cap), the oracle included.
        k_max = min(s.k_max, ctrl.config.policy.allocation.k_max)
        row = _checkpoint(a, s, state, views[step], s.seed + 1000 * (i + 1), k_max, fixed)
        row["step"] = step + 1
        out["checkpoints"].append(row)
    return out
