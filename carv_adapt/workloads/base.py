"""Shared result values of the workloads."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["StepRecord", "RunResult", "Checkpoint", "ComputeRun", "drive_to_compute", "observe_step"]


@dataclass(frozen=True)
class StepRecord:
    """What one training step did and cost."""

    step: int
    N: int
    K: int
    seconds: dict[str, float]
    grad_norm: float
    score: float | None = None


@dataclass
class RunResult:
    """A workload run: per-step records, the controller's refits, and the final parameters."""

    records: list[StepRecord]
    history: list[Any]
    final_state: dict[str, Tensor]
    compute_seconds: float
    scores: list[tuple[int, float]] = field(default_factory=list)
    controller_state: dict[str, Any] | None = None
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    def stage_means(self) -> dict[str, float]:
        """Mean seconds per outer draw (outer stages) and per inner draw (teacher) over the run."""
        n = sum(r.N for r in self.records)
        nk = sum(r.N * r.K for r in self.records)
        tot: dict[str, float] = {}
        for r in self.records:
            for k, v in r.seconds.items():
                tot[k] = tot.get(k, 0.0) + v
        return {k: v / (nk if k == "teacher" else n) for k, v in tot.items()}


def default_policy(teacher: Any, config: Any) -> Any:
    """The baseline fixed policy: ``K = 1``, uniform over ``[t_min, t_max]``, i.i.d. timesteps."""
    from carv_adapt.estimator import HierarchicalEstimator
    from carv_adapt.proposals import TargetMeasure, UniformProposal

    target = TargetMeasure(teacher.num_timesteps, config.t_min, config.t_max)
    return HierarchicalEstimator(
        UniformProposal(target), N=config.batch_size, K=1, stratification="iid", seed=config.seed
    )


def descend(
    plan: Any, outputs: Tensor, f: Tensor, params: list[Tensor], opt: Any, probe_now: bool, per_draw: bool = False
) -> tuple[Any, float, float, float]:
    """The shared update of the gradient workloads: an optional split-half probe (docs/theory.md §7.5; with
    ``per_draw``, from every draw's gradient, which also calibrates the profile: §7.9), then one backward of the
    rho-weighted inner mean through the upstream and an optimizer step.

    Returns ``(probe or None, probe seconds, backward seconds, flat gradient)``; the gradient is exactly the
    estimate's, which the controller's step-gradient statistics need (docs/theory.md §7.8).
    """
    import torch

    from carv_adapt.probe import flat_gradient, per_draw_probe, split_half_probe

    t0 = time.perf_counter()
    weighted = plan.weights_like(f) * f
    probe: Any = None
    t1 = time.perf_counter()
    if probe_now and plan.K >= 2:
        # A per-step generator from the plan's noise seed: the random pair split is reproducible on resume.
        g = torch.Generator().manual_seed(plan.noise_seed ^ 0x5EED)
        probe = (
            per_draw_probe(outputs, params, f, plan.rho, g)
            if per_draw
            else split_half_probe(outputs, params, weighted, g)
        )
    t2 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    outputs.backward(weighted.mean(dim=1) / plan.N)
    grad = flat_gradient(params)
    opt.step()
    # A step without a probe reports none of its time as the probe's (docs/theory.md §13.6).
    return probe, (t2 - t1 if probe is not None else 0.0), time.perf_counter() - t2 + t1 - t0, grad


def observe_step(controller: Any, plan: Any, out: tuple) -> tuple[Tensor, dict[str, float], Any, float]:
    """Hand one step's ``(f, seconds, probe, grad[, control])`` to the controller (if any) and close the step;
    ``grad`` is the flat step gradient (handed on as ``observe(..., grad=)``) or just its norm; a fifth element,
    ``(g, mu_g)`` from a control variate, goes to ``observe(..., control=)`` (docs/theory.md §14). Returns the
    gradient's norm in its place."""
    f, sec, probe, grad = out[:4]
    if controller is not None:
        extra = {"control": out[4]} if len(out) > 4 and out[4] is not None else {}
        if isinstance(grad, Tensor):
            extra["grad"] = grad
        controller.observe(plan, f, costs=sec, probe=probe, **extra)
        controller.step()
    return f, sec, probe, float(grad.norm()) if isinstance(grad, Tensor) else float(grad)


def drive(
    steps: int,
    controller: Any,
    policy: Any,
    one_step: Any,
    compute_budget: float | None = None,
    on_step: Any = None,
    score: Any = None,
    score_every: int = 0,
    state: Any = None,
    snapshot_steps: Any = (),
) -> RunResult:
    """The shared training loop: plan (controller or fixed policy), ``one_step(plan, step) -> (f, seconds,
    probe, grad_norm)``, observe/step the controller, score, stop at ``compute_budget`` measured seconds.

    ``state()`` (the trained parameters as a detached state dict) gives the result's final state and the
    snapshots taken after each step in ``snapshot_steps``."""
    records: list[StepRecord] = []
    snapshots: dict[int, dict[str, Tensor]] = {}
    wanted = set(snapshot_steps)
    scores: list[tuple[int, float]] = []
    compute = 0.0
    for step in range(steps):
        plan = controller.plan() if controller is not None else policy.plan()
        f, sec, probe, grad_norm = observe_step(controller, plan, one_step(plan, step))
        compute += sum(sec.values())
        value = (
            score() if score is not None and score_every and (step % score_every == 0 or step == steps - 1) else None
        )
        if value is not None:
            scores.append((step, value))
        rec = StepRecord(step=step, N=plan.N, K=plan.K, seconds=sec, grad_norm=grad_norm, score=value)
        records.append(rec)
        if state is not None and step in wanted:
            snapshots[step] = state()
        if on_step is not None:
            on_step(rec)
        if compute_budget is not None and compute >= compute_budget:
            break
    return RunResult(
        records=records,
        history=list(controller.history) if controller is not None else [],
        final_state=state() if state is not None else {},
        compute_seconds=compute,
        scores=scores,
        controller_state=controller.state_dict() if controller is not None else None,
        snapshots=snapshots,
    )


@dataclass(frozen=True)
class Checkpoint:
    """The parameters of a run when a given fraction of the compute budget was spent, and their scores.

    ``compute`` (on the run's cost clock) never exceeds ``fraction x budget``: it is the state after the last step
    that fit. ``seconds`` are the measured stage seconds and ``wall`` the wall-clock seconds (scoring excluded) up
    to that step."""

    fraction: float
    step: int
    compute: float
    seconds: float
    wall: float
    scores: dict[str, float]
    state: dict[str, Tensor] | None = None


@dataclass
class ComputeRun:
    """A run driven by compute (:func:`drive_to_compute`): per-step records and cost-clock charges, the
    checkpoints, the controller's refits."""

    records: list[StepRecord]
    costs: list[float]
    probed: list[bool]
    checkpoints: list[Checkpoint]
    budget: float
    history: list[Any]
    final_state: dict[str, Tensor]
    controller_state: dict[str, Any] | None = None
    exhausted: bool = False  # max_steps ran out before the last checkpoint

    @property
    def compute(self) -> float:
        return float(sum(self.costs))


def drive_to_compute(
    controller: Any,
    policy: Any,
    one_step: Any,
    step_cost: Callable[[int, int, bool], float] | None,
    budget: float,
    fractions: Sequence[float],
    state: Callable[[], dict[str, Tensor]],
    scores: Mapping[str, Callable[[dict[str, Tensor]], float]] | None = None,
    max_steps: int = 1_000_000,
    on_step: Any = None,
    keep_states: bool = False,
) -> ComputeRun:
    """The training loop of :func:`drive`, charged by a cost clock and checkpointed by compute fraction.

    Every step is charged ``step_cost(N, K, probed)`` (e.g. :meth:`carv_adapt.bench.cost_clock.CostClock.step_cost`,
    ``c_0 + N (c_out + K c_in)`` plus the probe's cost when the step probed; docs/theory.md §3), counted, never
    timed, so two runs compare at equal compute whatever else loads the machine. With ``step_cost=None`` a step is
    charged its measured stage seconds instead (the compute :func:`drive` counts). At each fraction ``f`` of
    ``budget`` the parameters after the last step whose cumulative charge is ``<= f budget`` are scored by each of
    ``scores`` (``state -> value``, once per distinct step; scoring is neither charged nor timed, and leaves torch's
    global random state as it was). The run stops once every fraction is checkpointed (the step that would have
    crossed the last one is run and recorded in ``records`` and ``costs``, but is not part of any checkpoint) or
    after ``max_steps``. ``final_state`` is the last checkpoint's.
    """
    targets = sorted(float(f) for f in fractions)
    if not targets or targets[0] < 0:
        raise ValueError(f"fractions must be non-empty and >= 0, got {list(fractions)}")
    tol = 1e-9 * max(budget, 1e-300)
    scores = dict(scores or {})
    records: list[StepRecord] = []
    costs: list[float] = []
    probed: list[bool] = []
    checkpoints: list[Checkpoint] = []
    scoring = 0.0
    last: dict[str, Tensor] = {}
    t_start = time.perf_counter()

    def take(f: float, step: int, compute: float, seconds: float, wall: float, st: dict[str, Tensor]) -> None:
        nonlocal scoring, last
        if checkpoints and st is last:  # several fractions fell on the same step: its scores are known
            values = dict(checkpoints[-1].scores)
        else:
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=[]):  # scoring must not move the run's global random state
                values = {name: float(fn(st)) for name, fn in scores.items()}
            scoring += time.perf_counter() - t0
        last = st
        checkpoints.append(Checkpoint(f, step, compute, seconds, wall, values, st if keep_states else None))

    prev = (0, 0.0, 0.0, 0.0, state())  # steps, compute, measured seconds, wall, parameters
    while targets and targets[0] * budget <= tol:
        take(targets.pop(0), *prev)
    compute, seconds = 0.0, 0.0
    step = 0
    while targets and step < max_steps:
        plan = controller.plan() if controller is not None else policy.plan()
        f, sec, probe, grad_norm = observe_step(controller, plan, one_step(plan, step))
        measured = float(sum(sec.values()))
        cost = measured if step_cost is None else float(step_cost(plan.N, plan.K, probe is not None))
        compute += cost
        seconds += measured
        costs.append(cost)
        probed.append(probe is not None)
        rec = StepRecord(step=step, N=plan.N, K=plan.K, seconds=sec, grad_norm=grad_norm)
        records.append(rec)
        step += 1
        wall = time.perf_counter() - t_start - scoring
        while targets and compute > targets[0] * budget + tol:  # this step overshoots: the state before it
            take(targets.pop(0), *prev)
        cur = (step, compute, seconds, wall, state())
        while targets and compute >= targets[0] * budget - tol:  # reached exactly
            take(targets.pop(0), *cur)
        prev = cur
        if on_step is not None:
            on_step(rec)
    exhausted = bool(targets)
    for f in targets:
        take(f, *prev)
    return ComputeRun(
        records=records,
        costs=costs,
        probed=probed,
        checkpoints=checkpoints,
        budget=budget,
        history=list(controller.history) if controller is not None else [],
        final_state=last,
        controller_state=controller.state_dict() if controller is not None else None,
        exhausted=exhausted,
    )
