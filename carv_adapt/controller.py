"""The online controller (docs/theory.md §8), used like an LR scheduler: ``plan()`` → your step → ``observe()`` →
``step()``. It measures, reduces its statistics, calls :func:`~carv_adapt.decide.decide` and applies the decision."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from carv_adapt.config import ControllerConfig, parse_config
from carv_adapt.crn import CRNGroup
from carv_adapt.decide import DecisionState, decide, initial_state, probe_due, proposal_of, scheduled_k, warmup_cycles
from carv_adapt.distributed import current_rank, derive_seed, reduced_copies
from carv_adapt.errors import StateError
from carv_adapt.metric import Preconditioner, in_metric
from carv_adapt.plan import Plan, PlanQueue, Refit, draw_plans
from carv_adapt.proposals import Proposal, bin_sums, resolve_prior
from carv_adapt.record import policy_snapshot, refit_record, summary_line
from carv_adapt.schedule import is_refit_step, plans_ahead
from carv_adapt.stats.calibration import ProfileCalibration
from carv_adapt.stats.control import ControlVariateStats
from carv_adapt.stats.costs import CostTracker, StageRole, StageTimer
from carv_adapt.stats.grouped import GroupedVariance
from carv_adapt.stats.profile import TimestepProfile
from carv_adapt.stats.snapshot import Statistics, set_references
from carv_adapt.stats.steps import PolicySegment, StepVariance

__all__ = ["AdaptiveController", "derive_seed"]

_STATS = ("profile", "grouped", "param_grouped", "costs", "steps", "calibration")  # a decision's inputs, reduce's order
_TRACKERS = (*_STATS, "control")
_LATER = {"crn", "control", "steps", "drawn", "calibration"}  # state a checkpoint may lack (optional or newer)


class AdaptiveController:
    """Plans ``N x K`` draws, learns per-timestep second moments, between/within variances and stage costs, and
    refits the IS proposal and ``K`` every ``refit_every`` steps after a warm-up.

    Args:
        config: a :class:`ControllerConfig` or a dict; flat keyword overrides by name (``batch_size=4, k_max=32``).
        prior: optional analytic proposal (``Proposal``, or ``T``-dim ``g`` as ``q ∝ pi g``, e.g. the teacher-weight
            one): the warm-up proposal (``warmup_proposal="prior"``) and a candidate at every refit.
        stage_roles: extra cost stages and their role (``"outer" | "inner" | "fixed" | "measurement"``).
        rank, process_group: this rank (default ``torch.distributed``'s, else 0; seeds its stream), the group whose
            statistics each refit sums (default: the world).
        logger: callable(s) given each :class:`Refit` (e.g. :class:`~carv_adapt.integrations.RefitLogger`).
        optimizer, params: with ``metric="preconditioned"``, the optimizer whose per-coordinate scaling defines
            the metric and the parameters the probe's gradients are flattened over, in order (§13).
    """

    def __init__(
        self,
        config: ControllerConfig | dict | None = None,
        *,
        prior: Proposal | Tensor | None = None,
        stage_roles: dict[str, StageRole] | None = None,
        rank: int | None = None,
        process_group: Any = None,
        logger: Callable[[Refit], None] | Sequence[Callable[[Refit], None]] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        params: Sequence[Tensor] | None = None,
        **overrides: Any,
    ) -> None:
        self.config = parse_config(config, **overrides)
        self._precond = Preconditioner(optimizer, params or []) if self.config.metric == "preconditioned" else None
        self.skipped_probes = 0
        self.rank, self.process_group = current_rank() if rank is None else rank, process_group
        self.loggers = [] if logger is None else list(logger) if isinstance(logger, Sequence) else [logger]
        self._extra_roles = dict(stage_roles or {})
        target = self.config.policy.target_measure()
        self._prior_pmf = None if prior is None else resolve_prior(prior, target, self.config.policy.safeguards.alpha)
        self._build()

    def _build(self) -> None:
        c, pol = self.config, self.config.policy
        self.target = pol.target_measure()
        self.edges = self.target.bin_edges(pol.num_bins)
        self.pi_b = self.target.bin_mass(self.edges)
        nf = c.nonfinite
        self.profile = TimestepProfile(self.edges, nf)
        self.grouped, self.param_grouped, self.steps = GroupedVariance(nf), GroupedVariance(nf), StepVariance(nf)
        self.costs = CostTracker({**CostTracker(None).roles, **self._extra_roles}, c.nonfinite)
        self.control, self.calibration = ControlVariateStats(self.edges, nf), ProfileCalibration(self.edges, nf)
        self.generator = torch.Generator().manual_seed(derive_seed(c.seed, self.rank))
        if pol.proposal.kind == "weighted" and self._prior_pmf is None:
            self._prior_pmf = resolve_prior(torch.tensor(pol.proposal.g, dtype=torch.float64), self.target, 0.0)
        self.state: DecisionState = initial_state(c, self.edges, self._prior_pmf)
        self.history: list[Refit] = []
        self._pending: Plan | None = None
        self._step, self._observed, self._probed, self._proposal_obj, self._last_probe = 0, False, False, None, None
        self._probe_cache: Any = None
        self._timers, self._explicit_costs, self._crn, self._queue = {}, {}, None, PlanQueue()  # CRN group: §18

    def probe_due(self) -> bool:
        """Whether to probe this step: while the probe statistics are loose and within ``probe_budget``."""
        return probe_due(self._step, self._last_probe, self.K, self._probe_stats, self.costs.compute, self.config)

    def _probe_stats(self) -> Any:  # once per probe: forgetting scales all sums of a weighted mean alike (§13.6)
        self._probe_cache = self._probe_cache or self.param_grouped.compute()
        return self._probe_cache

    @classmethod
    def from_policy(cls, policy: Any, **overrides: Any) -> AdaptiveController:
        """Start from a :class:`~carv_adapt.policy.Policy`'s K (else the warm-up cycle) and proposal; a frozen policy
        (``adaptive=False``) keeps them, refits still record statistics. ``overrides``: settings by flat name."""
        return cls(ControllerConfig(policy=policy), **overrides)

    def to_policy(self, adaptive: bool = True, provenance: dict[str, Any] | None = None) -> Any:
        """The current allocation and proposal, with this controller's settings, as a :class:`~.policy.Policy`."""
        provenance = dict(provenance or {}, step=self._step)
        return policy_snapshot(self.config.policy, self.state, self.edges, adaptive, provenance)

    @property
    def proposal(self) -> Proposal:
        """The proposal the next plan draws from."""
        if self._proposal_obj is None:
            self._proposal_obj = proposal_of(self.state, self.target, self.edges, self._prior_pmf)
        return self._proposal_obj

    proposal_kind = property(lambda self: self.state.proposal_kind, doc='Next proposal: "uniform", "prior", "binned".')
    step_count = property(lambda self: self._step, doc="Steps taken.")
    K = property(lambda self: self.state.K, doc="Inner draws per outer draw of the next plan.")
    N = property(lambda self: self.state.N, doc="Outer draws of the next plan.")
    in_warmup = property(lambda self: self._step < self.config.policy.schedule.warmup_steps)
    estimated_ecm = property(  # the variance model's ECM for the current policy at the last refit
        lambda self: self.history[-1].predicted_ecm if self.history else math.nan, doc="ECM at the last refit (or NaN)."
    )
    num_nonfinite = property(lambda self: int(sum(float(getattr(self, n).num_nonfinite) for n in _TRACKERS)),
                             doc="Observations dropped for NaN/Inf (and draws run uncontrolled) so far.")  # fmt: skip

    def plan(self) -> Plan:
        """This step's allocation, timesteps, weights, noise seed and control coefficients (drawn ahead to a refit)."""
        if self._pending is not None:
            raise StateError(f"plan() called twice in step {self._step}; call step() after observe() first")
        pol, st, sch = self.config.policy, self.state, self.config.policy.schedule
        n = plans_ahead(self._step, sch.warmup_steps, sch.refit_every, warmup_cycles(self._step, self.config))
        ahead = lambda: draw_plans(self.proposal, st.N, st.K, self.generator, n, stratification=pol.stratification,  # noqa: E731
                                   antithetic=pol.antithetic, edges=self.edges, outer=pol.outer)  # fmt: skip
        draw = lambda: self._queue.next(st, self._step, ahead)  # noqa: E731
        p = draw() if self._crn is None else self._crn.plan_for(self._step, draw)
        beta = self.control.betas(p.bins, (p.N, p.K))  # from earlier steps only; None before any control
        self._pending, self._observed, self._probed = (p if beta is None else replace(p, cv_beta=beta)), False, False
        return self._pending

    def crn_group(self, items: int, *, center: bool = True) -> CRNGroup:
        """Common random numbers (§18): every ``items`` steps replay one plan, observed once folded, until closed."""
        return CRNGroup.open_on(self, items, center, busy=self._pending is not None)

    @contextmanager
    def timer(self, stage: str, device: torch.device | str | None = None) -> Iterator[StageTimer]:
        """Time a stage of this step (CUDA events on a CUDA ``device``); accumulates over entries."""
        self.costs.role(stage)
        if self._pending is None:
            raise StateError(f"timer({stage!r}) outside a step: call plan() first")
        with self._timers.setdefault(stage, StageTimer(device)) as t:
            yield t

    def observe(
        self,
        plan: Plan,
        contributions: Tensor | None = None,
        *,
        sq_norms: Tensor | None = None,
        costs: dict[str, float] | None = None,
        probe: tuple[Tensor, ...] | None = None,
        control: tuple[Tensor, Tensor] | None = None,
        grad: Tensor | Sequence[Tensor] | None = None,
    ) -> None:
        """Take what this step produced (docs/theory.md §7; all but ``plan`` optional).

        Args:
            plan: the plan :meth:`plan` returned this step.
            contributions: ``N x K x ...`` rho-free per-draw contributions ``f`` (proxy space); or ``sq_norms``,
                their ``N x K`` ``||f||^2`` (the profile only). costs: seconds per stage besides :meth:`timer`'s.
            probe: ``(g_A, g_B)``, ``N x P`` gradients of the interleaved halves of each outer draw (§7.5), or
                ``(g_A, g_B, sq_norms)`` from :func:`~carv_adapt.probe.per_draw_probe` (§7.9).
            control: ``(g, mu_g)``, a surrogate on the same draws and its exact conditional mean (e.g.
                :meth:`~carv_adapt.control_variate.ControlVariate.evaluate`): the statistics track the controlled
                integrand and the coefficients are refitted (§14).
            grad: the step's gradient of the estimate (flat, or per parameter in the probe's order): in parameter
                space every step then measures sigma_B^2 (§7.8).
        """
        if self._pending is None or plan is not self._pending:
            raise StateError("observe() needs the plan returned by this step's plan(); call plan() first")
        if self._observed:
            raise StateError(f"observe() called twice in step {self._step}; call step() to advance")
        plan.check_observation(contributions, sq_norms, probe)
        if control is not None:  # the trackers below see the controlled integrand, i.e. what actually runs
            contributions, sq_norms = self.control.apply(plan.bins, plan.cv_beta, contributions, *control), None
        if self._crn is not None:  # shared draws: the statistics see one folded observation per group (§18)
            contributions, sq_norms = self._crn.add(contributions, sq_norms, probe), None
        design, outer = ("stratified" if plan.stratification == "stratified" else "iid"), plan.outer_layout()
        flat, own = None, sq_norms is None
        if contributions is not None:
            # Reductions run in the contributions' own dtype; per-draw and per-group sums accumulate in float64.
            flat = contributions.detach().reshape(plan.N, plan.K, -1)
            sq_norms = torch.linalg.vector_norm(flat, dim=-1).double().pow(2) if own else sq_norms
        finite = sq_norms is not None and self.profile.update(plan.t, sq_norms, bins=plan.bins, defer=True)
        if flat is not None:  # finite norms of these very draws mean finite draws (plans' weights are finite)
            self.grouped.update(flat, plan.rho, design=design, outer=outer, defer=True, finite=own and finite)
        scaled = None if probe is None else in_metric((probe[0], probe[1]), self._precond)
        self.skipped_probes += probe is not None and scaled is None  # no second moments yet: last estimates stay
        if scaled is not None:
            self._last_probe = self._step
            self.param_grouped.update_split_half(scaled[0], scaled[1], plan.K, design=design, outer=outer)
            self._probe_cache = None
        if scaled is not None and probe[2:] and sq_norms is not None and not (self._precond or control or self._crn):
            self.calibration.update(plan.t, sq_norms, probe[2], bins=plan.bins)  # §7.9: same draws, both spaces
        if grad is not None and self.config.space == "parameter" and self._crn is None and outer.is_iid:
            seg = PolicySegment(plan.N, plan.K, design, self.state.proposal_kind, self.state.probs)
            self.steps.update(grad, seg, self._precond)
        for stage, sec in (costs or {}).items():
            self.costs.role(stage)
            self._explicit_costs[stage] = self._explicit_costs.get(stage, 0.0) + float(sec)
        self._observed, self._probed = True, probe is not None

    def step(self) -> None:
        """Close this step: record its costs, apply forgetting and refit when the schedule says so."""
        if self._pending is None:
            raise StateError(f"step() in step {self._step} without a plan: call plan() (and observe()) first")
        stage_seconds = {name: t.seconds() for name, t in self._timers.items()}
        stage_seconds.update({k: stage_seconds.get(k, 0.0) + v for k, v in self._explicit_costs.items()})
        if stage_seconds:
            self.costs.update(self._pending.N, self._pending.K, stage_seconds, measured=self._probed)
        self._timers, self._explicit_costs, self._pending = {}, {}, None
        for name in _TRACKERS:
            getattr(self, name).decay(self.config.policy.safeguards.forgetting)
        self._step += 1
        if is_refit_step(self._step, (sc := self.config.policy.schedule).warmup_steps, sc.refit_every):
            self.refit()
        else:
            self.state = scheduled_k(self._step, self.state, self.config)

    def statistics(self) -> Statistics:
        """The statistics the next decision reads, summed over ranks under ``torch.distributed``."""
        reduced = reduced_copies([getattr(self, n) for n in _STATS], self.process_group)
        return Statistics.reduce(self.pi_b, *reduced)  # type: ignore[arg-type]

    def refit(self) -> Refit:
        """Decide ``K`` and the proposal now from the accumulated statistics (also called by :meth:`step`)."""
        for name in _STATS:  # at a refit, not on a copy per read: deferred steps are reduced once, at set steps
            getattr(self, name).flush()
        stats = self.statistics()
        prior_b = None if self._prior_pmf is None else bin_sums(self._prior_pmf, self.edges)
        decision = decide(stats, before := self.state, self.config, prior_b)
        set_references(self.grouped, self.param_grouped, stats, decision)  # what weighs the next steps (§7.10)
        for text in decision.warnings:
            warnings.warn(f"carv_adapt controller: {text}", RuntimeWarning, stacklevel=3)
        self.state, self._proposal_obj = decision.state, None
        extra = {"num_nonfinite": self.num_nonfinite, **self.control.record()}
        record = refit_record(self._step, stats, before, decision, self.edges, self.target.num_timesteps, extra)
        self.history.append(record)
        for log in self.loggers:
            log(record)
        return record

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the future, as plain data (config, generator, statistics, history)."""
        if self._pending is not None:
            raise StateError("state_dict() in the middle of a step: call it after step()")
        return {
            "config": self.config.model_dump(mode="json"), "rank": self.rank, "stage_roles": dict(self.costs.roles),
            "prior_pmf": None if self._prior_pmf is None else self._prior_pmf.clone(),
            "step": self._step, "last_probe": self._last_probe, "decision_state": self.state.to_dict(),
            "generator": self.generator.get_state(), **{name: getattr(self, name).state_dict() for name in _TRACKERS},
            "history": [r.to_dict() for r in self.history],
            **({} if self._crn is None else {"crn": self._crn.state_dict()}),
            "drawn": self._queue.state_dict(self.state),  # plans drawn ahead, not yet run: a resumed run runs them
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (including its config: a differently configured controller becomes
        the saved one, as with PyTorch schedulers)."""
        if self._pending is not None:
            raise StateError("load_state_dict() in the middle of a step: call it between steps")
        missing = set(self.state_dict()) - set(state) - _LATER  # declared by state_dict
        if missing:
            raise StateError(f"controller state is missing {sorted(missing)}")
        self.config, self._extra_roles = parse_config(state["config"]), dict(state["stage_roles"])
        self._prior_pmf = None if state["prior_pmf"] is None else torch.as_tensor(state["prior_pmf"]).double()
        self.rank = int(state["rank"])
        self._build()
        self._step, self._last_probe = int(state["step"]), state["last_probe"]
        self.state = DecisionState.from_dict(state["decision_state"])
        self._queue.load_state_dict(self.state, state.get("drawn"))
        self.generator.set_state(state["generator"])
        for name in _TRACKERS:  # a checkpoint from before control variates (§14) or §7.8 lacks them: start empty
            getattr(self, name).load_state_dict(state.get(name, getattr(self, name).state_dict()))
        self.history = [Refit(**r) for r in state["history"]]
        CRNGroup.restore_on(self, state.get("crn"))

    def summary(self) -> str:
        """One line: step, K, N, where the proposal puts most mass, and the estimated ECM."""
        return summary_line(self._step, self.state, self.edges, self.pi_b, self.estimated_ecm)
