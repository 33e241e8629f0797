"""Shared result values of the workloads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["StepRecord", "RunResult"]


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
    plan: Any, outputs: Tensor, f: Tensor, params: list[Tensor], opt: Any, probe_now: bool
) -> tuple[Any, float, float, float]:
    """The shared update of the gradient workloads: an optional split-half probe (SPEC §7), then one backward
    of the rho-weighted inner mean through the upstream and an optimizer step.

    Returns ``(probe or None, probe seconds, backward seconds, gradient norm)``.
    """
    import time

    import torch

    from carv_adapt.probe import split_half_probe

    t0 = time.perf_counter()
    weighted = plan.weights_like(f) * f
    # A per-step generator from the plan's noise seed: the random pair split is reproducible on resume.
    g = torch.Generator().manual_seed(plan.noise_seed ^ 0x5EED)
    probe = split_half_probe(outputs, params, weighted, g) if probe_now and plan.K >= 2 else None
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    outputs.backward(weighted.mean(dim=1) / plan.N)
    grad_norm = float(torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None]).norm())
    opt.step()
    return probe, t1 - t0, time.perf_counter() - t1, grad_norm


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
        f, sec, probe, grad_norm = one_step(plan, step)
        compute += sum(sec.values())
        if controller is not None:
            controller.observe(plan, f, costs=sec, probe=probe)
            controller.step()
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
