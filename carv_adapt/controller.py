"""The online controller (SPEC §8), used like an LR scheduler: ``plan()`` → your step → ``observe()`` → ``step()``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from carv_adapt.allocation import memory_k_max
from carv_adapt.closed_form import FitInputs, fit_policy
from carv_adapt.config import ControllerConfig, parse_config
from carv_adapt.distributed import reduced_copies
from carv_adapt.errors import ShapeError, StateError
from carv_adapt.plan import Plan, Refit, make_plan
from carv_adapt.proposals.base import PmfProposal, Proposal, TargetMeasure, bin_sums
from carv_adapt.proposals.families import BinnedProposal, UniformProposal
from carv_adapt.schedule import is_refit_step, warmup_k
from carv_adapt.stats.costs import CostTracker, StageRole, StageTimer
from carv_adapt.stats.grouped import GroupedVariance
from carv_adapt.stats.profile import TimestepProfile
from carv_adapt.variance import is_second_moment

__all__ = ["AdaptiveController", "derive_seed"]


def derive_seed(seed: int, rank: int = 0) -> int:
    """A 63-bit stream seed for ``(seed, rank)``: every rank gets its own, reproducible stream."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint64)[0]) >> 1


class AdaptiveController:
    """Plans ``N x K`` draws, learns per-timestep second moments, between/within variances and stage
    costs, and refits the IS proposal and ``K`` jointly every ``refit_every`` steps after a warm-up.

    Args:
        config: a :class:`ControllerConfig` or a dict (keyword overrides allowed).
        prior: optional analytic proposal (``Proposal`` or ``T``-dim Tensor ``g``, used as ``q ∝ pi g``),
            e.g. :func:`~carv_adapt.proposals.teacher_weight_proposal`; the warm-up proposal when
            ``warmup_proposal="prior"``, and a candidate at every refit.
        stage_roles: extra cost stages and their role (``"outer" | "inner" | "fixed"``).
        rank: this process's rank (default: ``torch.distributed``'s when initialized, else 0); it seeds this
            rank's own timestep/noise stream.
        process_group: the group whose statistics are summed at each refit (default: the world).
        logger: called with each :class:`Refit` (e.g. :class:`~carv_adapt.integrations.RefitLogger`,
            :class:`~carv_adapt.fit.JsonlRefitLog`), or a list of such callables.

    Example::

        ctrl = AdaptiveController(num_timesteps=1000, batch_size=4)
        for _ in range(steps):
            plan = ctrl.plan()
            with ctrl.timer("upstream"):
                x = render(plan.N)
            with ctrl.timer("teacher"):
                f = integrand(x, plan.t, plan.noise(x.shape[1:]))     # N x K x ...
            loss = surrogate(plan.weighted_mean(f))
            ctrl.observe(plan, f)
            ctrl.step()
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
        **overrides: Any,
    ) -> None:
        self.config = parse_config(config, **overrides)
        if rank is None:
            dist = torch.distributed
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.rank = rank
        self.process_group = process_group
        self.loggers = [] if logger is None else list(logger) if isinstance(logger, Sequence) else [logger]
        self._extra_roles = dict(stage_roles or {})
        self._prior_pmf = self._resolve_prior(prior)
        self._build()

    # ------------------------------------------------------------------ set-up
    def _build(self) -> None:
        c = self.config
        self.target = TargetMeasure(c.num_timesteps, c.t_min, c.t_max)
        self.edges = self.target.bin_edges(c.num_bins)
        self.pi_b = self.target.bin_mass(self.edges)
        self.profile = TimestepProfile(self.edges, c.nonfinite)
        self.grouped = GroupedVariance(c.nonfinite)
        self.param_grouped = GroupedVariance(c.nonfinite)
        roles = dict(CostTracker(None).roles)
        roles.update(self._extra_roles)
        self.costs = CostTracker(roles, c.nonfinite)
        self.generator = torch.Generator().manual_seed(derive_seed(c.seed, self.rank))
        self._step = 0
        self._K = self._warmup_k(0)
        self._N = c.batch_size
        self._proposal_kind = "prior" if (c.warmup_proposal == "prior" and self._prior_pmf is not None) else "uniform"
        self._probs = bin_sums(self._current_proposal_uncached().pmf(), self.edges)
        self._refits_since_k_change = c.k_cooldown
        self.history: list[Refit] = []
        self._pending: Plan | None = None
        self._observed = False
        self._timers: dict[str, StageTimer] = {}
        self._explicit_costs: dict[str, float] = {}
        self._proposal_obj: Proposal | None = None
        self._from_policy = False

    # ------------------------------------------------------------------ policies
    @classmethod
    def from_policy(cls, policy: Any, **overrides: Any) -> AdaptiveController:
        """Start from a :class:`~carv_adapt.policy.Policy`: its K and proposal from step 0 (no warm-up K cycle).

        A frozen policy (``adaptive=False``) keeps them for the whole run; refits still record statistics.
        """
        from carv_adapt.policy import BinnedSpec, UniformSpec

        kwargs = policy.controller_config(**overrides)
        prior = None if isinstance(policy.proposal, (UniformSpec, BinnedSpec)) else policy.proposal_pmf()
        ctrl = cls(prior=prior, **kwargs)
        ctrl._from_policy = True
        c = ctrl.config
        ctrl._K = min(max(policy.allocation.K, c.k_min), c.k_max)
        if not isinstance(policy.proposal, UniformSpec):
            ctrl._probs = bin_sums(policy.proposal_pmf(), ctrl.edges)
            ctrl._proposal_kind = "prior" if prior is not None else "binned"
            ctrl._proposal_obj = None
        return ctrl

    def to_policy(self, adaptive: bool = True, provenance: dict[str, Any] | None = None) -> Any:
        """The current allocation, proposal and settings as a :class:`~carv_adapt.policy.Policy`."""
        from carv_adapt.policy import AllocationSpec, BinnedSpec, Policy, Safeguards, TargetSpec, UniformSpec

        c = self.config
        proposal = (
            UniformSpec()
            if self._proposal_kind == "uniform"
            else BinnedSpec(bin_edges=self.edges.tolist(), probs=self._probs.tolist())
        )
        fields = set(Safeguards.model_fields)
        return Policy(
            target=TargetSpec(num_timesteps=c.num_timesteps, t_min=c.t_min, t_max=c.t_max),
            allocation=AllocationSpec(
                mode=c.allocation, K=self._K, N=self._N, budget=c.budget, k_min=c.k_min, k_max=c.k_max
            ),
            proposal=proposal,
            stratification=c.stratification,
            antithetic=c.antithetic,
            safeguards=Safeguards(**{k: v for k, v in c.model_dump().items() if k in fields}),
            num_bins=c.num_bins,
            warmup_steps=c.warmup_steps,
            refit_every=c.refit_every,
            adaptive=adaptive,
            provenance=dict(provenance or {}, step=self._step),
        )

    def _resolve_prior(self, prior: Proposal | Tensor | None) -> Tensor | None:
        if prior is None:
            return None
        target = TargetMeasure(self.config.num_timesteps, self.config.t_min, self.config.t_max)
        if isinstance(prior, Proposal):
            pmf = PmfProposal(target, prior.pmf()).pmf()
        else:
            pmf = PmfProposal(target, target.pmf() * torch.as_tensor(prior, dtype=torch.float64)).pmf()
        # The defensive mixture applies to the prior too: an analytic g(t) that vanishes somewhere (the
        # teacher-weight prior at t -> T, where alphabar -> 0) would otherwise give unbounded weights.
        a = self.config.alpha
        return (1.0 - a) * pmf + a * target.pmf()

    def _warmup_k(self, step: int) -> int:
        c = self.config
        k_cap = memory_k_max(c.memory_cap_bytes, c.inner_bytes, c.batch_size, c.k_max)
        return min(max(warmup_k(step, c.warmup_k), c.k_min), k_cap)

    def _current_proposal_uncached(self) -> Proposal:
        if self._proposal_kind == "uniform":
            return UniformProposal(self.target)
        if self._proposal_kind == "prior":
            assert self._prior_pmf is not None
            return PmfProposal(self.target, self._prior_pmf)
        return BinnedProposal(self.target, self.edges, self._probs)

    # ------------------------------------------------------------------ properties
    @property
    def proposal(self) -> Proposal:
        """The proposal the next plan draws from."""
        if self._proposal_obj is None:
            self._proposal_obj = self._current_proposal_uncached()
        return self._proposal_obj

    @property
    def proposal_kind(self) -> str:
        """Which proposal the next plan draws from: ``"uniform"``, ``"prior"`` or ``"binned"`` (learned)."""
        return self._proposal_kind

    @property
    def step_count(self) -> int:
        return self._step

    @property
    def K(self) -> int:
        return self._K

    @property
    def N(self) -> int:
        return self._N

    @property
    def in_warmup(self) -> bool:
        return self._step < self.config.warmup_steps

    @property
    def estimated_ecm(self) -> float:
        """The variance model's ECM for the current policy at the last refit (NaN before the first)."""
        return self.history[-1].predicted_ecm if self.history else math.nan

    # ------------------------------------------------------------------ the loop
    def plan(self) -> Plan:
        """The allocation, timesteps, weights and noise seed for this step."""
        if self._pending is not None:
            raise StateError(f"plan() called twice in step {self._step}; call step() after observe() first")
        self._pending = make_plan(
            self.proposal,
            self._N,
            self._K,
            self.generator,
            step=self._step,
            stratification=self.config.stratification,
            antithetic=self.config.antithetic,
            edges=self.edges,
        )
        self._observed = False
        return self._pending

    @contextmanager
    def timer(self, stage: str, device: torch.device | str | None = None) -> Iterator[StageTimer]:
        """Time a stage of this step (CUDA events on a CUDA ``device``); accumulates over entries."""
        self.costs.role(stage)
        if self._pending is None:
            raise StateError(f"timer({stage!r}) outside a step: call plan() first")
        t = self._timers.get(stage)
        if t is None:
            t = self._timers[stage] = StageTimer(device)
        with t:
            yield t

    def observe(
        self,
        plan: Plan,
        contributions: Tensor | None = None,
        *,
        sq_norms: Tensor | None = None,
        costs: dict[str, float] | None = None,
        probe: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """Take what this step produced.

        Args:
            plan: the plan returned by :meth:`plan` this step.
            contributions: ``N x K x ...`` rho-free per-draw contributions ``f`` (proxy space).
            sq_norms: ``N x K`` ``||f||^2`` when the full contributions are not at hand (profile only).
            costs: measured seconds per stage for this step (in addition to :meth:`timer` stages).
            probe: ``(g_A, g_B)``, ``N x P`` parameter-space gradients of two interleaved halves of each outer
                draw's inner contributions (SPEC §7 split-half probe).
        """
        if self._pending is None or plan is not self._pending:
            raise StateError("observe() needs the plan returned by this step's plan(); call plan() first")
        if self._observed:
            raise StateError(f"observe() called twice in step {self._step}; call step() to advance")
        lead = (plan.N, plan.K)
        if contributions is not None:
            if contributions.dim() < 2 or tuple(contributions.shape[:2]) != lead:
                raise ShapeError(
                    f"contributions: shape {tuple(contributions.shape)}, expected N x K x ... with N x K = {lead}"
                )
            f = contributions.detach()
            # Reductions run in the contributions' own dtype (no full-size float64 copies on the hot path);
            # only the per-draw and per-group sums are accumulated in float64.
            flat = f.reshape(plan.N, plan.K, -1)
            if sq_norms is None:
                sq_norms = torch.linalg.vector_norm(flat, dim=-1).double().pow(2)
            self.grouped.update(flat, plan.rho)
        if sq_norms is not None:
            if tuple(sq_norms.shape) != lead:
                raise ShapeError(f"sq_norms: shape {tuple(sq_norms.shape)}, expected N x K = {lead}")
            self.profile.update(plan.t, sq_norms, bins=plan.bins)
        if probe is not None:
            g_a, g_b = probe
            if g_a.shape != g_b.shape or g_a.dim() != 2 or g_a.shape[0] != plan.N:
                raise ShapeError(
                    f"probe: two N x P gradients with N={plan.N} expected, got "
                    f"{tuple(g_a.shape)} and {tuple(g_b.shape)}"
                )
            self.param_grouped.update_split_half(g_a, g_b, plan.K)
        for stage, sec in (costs or {}).items():
            self.costs.role(stage)
            self._explicit_costs[stage] = self._explicit_costs.get(stage, 0.0) + float(sec)
        self._observed = True

    def step(self) -> None:
        """Close this step: record its costs, apply forgetting and refit when the schedule says so."""
        if self._pending is None:
            raise StateError(f"step() in step {self._step} without a plan: call plan() (and observe()) first")
        stage_seconds = {name: t.seconds() for name, t in self._timers.items()}
        for stage, sec in self._explicit_costs.items():
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + sec
        if stage_seconds:
            self.costs.update(self._pending.N, self._pending.K, stage_seconds)
        self._timers, self._explicit_costs = {}, {}
        self._pending = None
        gamma = self.config.forgetting
        for s in (self.profile, self.grouped, self.param_grouped, self.costs):
            s.decay(gamma)
        self._step += 1
        if is_refit_step(self._step, self.config.warmup_steps, self.config.refit_every):
            self.refit()
        elif self.in_warmup and not self._from_policy:
            self._K = self._warmup_k(self._step)

    # ------------------------------------------------------------------ refit
    def refit(self) -> Refit:
        """Refit ``K`` and the proposal now from the accumulated statistics (also called by :meth:`step`)."""
        c = self.config
        # Under torch.distributed every rank decides from the sums over all ranks (one all-reduce).
        profile, grouped, param_grouped, costs = reduced_copies(
            [self.profile, self.grouped, self.param_grouped, self.costs], self.process_group
        )
        cost = costs.compute()
        m = profile.compute(c.prior_count)
        proxy = grouped.compute()
        use_param = c.space == "parameter" and param_grouped.groups > 0
        M2 = proxy.M2
        # Shrinkage steadies the proposal; the variance prediction needs the unshrunk (unbiased) means.
        m_raw = profile.compute(0.0)
        S_cur = float(is_second_moment(self.pi_b, self._probs, m_raw))
        if use_param:
            probe = param_grouped.compute()
            sigma_b2, sigma_w2 = probe.sigma_b2, probe.sigma_w2
            # The proxy's M2 and profile only supply the ratio S(p') - M2 : S(p_cur) - M2 (SPEC §7).
            M2 = 0.0 if math.isnan(M2) else M2
        else:
            # Proxy space: sigma_B^2 and M2 do not depend on the proposal, and the profile gives
            # sigma_W^2(p) = E_p[rho^2 m] - M2 for any p, not only the mix of proposals seen so far.
            sigma_b2 = proxy.sigma_b2
            sigma_w2 = S_cur - M2 if not math.isnan(M2) else math.nan
            if not sigma_w2 > 0.0:
                sigma_w2 = proxy.sigma_w2  # the profile is too noisy yet to resolve S - M2
        reasons = []
        k_cap = memory_k_max(c.memory_cap_bytes, c.inner_bytes, self._N, c.k_max)
        if k_cap < c.k_max:
            reasons.append(f"K capped at {k_cap} by memory_cap_bytes")
        allow_k = self._refits_since_k_change >= c.k_cooldown
        if cost.steps <= 0:
            allow_k = False
            reasons.append("no cost observations (use timer() or observe(costs=...)): K kept")
        if math.isnan(sigma_w2) or math.isnan(sigma_b2):
            allow_k = False
            reasons.append("between/within not identified yet (needs N >= 2 or K >= 2): K kept")
        fit = fit_policy(
            FitInputs(
                pi_b=self.pi_b,
                m_b=m,
                m_var=m_raw,
                p_cur=self._probs,
                K_cur=self._K,
                sigma_b2=0.0 if math.isnan(sigma_b2) else sigma_b2,
                sigma_w2=0.0 if math.isnan(sigma_w2) else sigma_w2,
                M2=M2,
                c_0=cost.c_0,
                c_out=cost.c_out,
                c_in=cost.c_in,
                mode=c.allocation,
                N=c.batch_size,
                budget=c.budget,
                k_min=min(c.k_min, k_cap),
                k_max=k_cap,
                alpha=c.alpha,
                smoothing=c.smoothing,
                max_move=c.max_move,
                k_threshold=c.k_threshold,
                proposal_threshold=c.proposal_threshold,
                allow_k_change=allow_k,
                adapt_proposal=c.adapt_proposal,
                adapt_k=c.adapt_k,
                prior_b=None if self._prior_pmf is None else bin_sums(self._prior_pmf, self.edges),
            )
        )
        if fit.proposal_changed:
            self._probs = fit.p.clone()
            self._proposal_kind = "binned"
            self._proposal_obj = None
        self._refits_since_k_change = 0 if fit.k_changed else self._refits_since_k_change + 1
        self._K = min(fit.K, k_cap)
        self._N = fit.N if c.allocation == "fixed_budget" else c.batch_size
        record = Refit(
            step=self._step,
            K=self._K,
            N=self._N,
            proposal=self._probs.tolist(),
            bin_edges=self.edges.tolist(),
            profile=m.tolist(),
            profile_counts=profile.count.tolist(),
            sigma_b2=sigma_b2,
            sigma_w2=sigma_w2,
            c_0=cost.c_0,
            c_out=cost.c_out,
            c_in=cost.c_in,
            predicted_W=fit.W,
            predicted_W_baseline=fit.W_baseline,
            predicted_ecm=fit.ecm,
            is_gain=fit.is_gain,
            k_changed=fit.k_changed,
            proposal_changed=fit.proposal_changed,
            reason="; ".join([fit.reason, *reasons]),
            extra={
                "space": "parameter" if use_param else "proxy",
                "sigma_w2_pooled": proxy.sigma_w2,
                "sigma_w2_paired": proxy.sigma_w2_paired,
                "M2": M2,
                "num_nonfinite": self.num_nonfinite,
            },
        )
        self.history.append(record)
        for log in self.loggers:
            log(record)
        return record

    @property
    def num_nonfinite(self) -> int:
        """Observations dropped for NaN/Inf so far, over all statistics."""
        return int(sum(float(s.num_nonfinite) for s in (self.profile, self.grouped, self.param_grouped, self.costs)))

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the future, as plain data (config, generator, statistics, history)."""
        if self._pending is not None:
            raise StateError("state_dict() in the middle of a step: call it after step()")
        return {
            "config": self.config.model_dump(mode="json"),
            "rank": self.rank,
            "stage_roles": dict(self.costs.roles),
            "prior_pmf": None if self._prior_pmf is None else self._prior_pmf.clone(),
            "step": self._step,
            "K": self._K,
            "N": self._N,
            "proposal_kind": self._proposal_kind,
            "probs": self._probs.clone(),
            "refits_since_k_change": self._refits_since_k_change,
            "from_policy": self._from_policy,
            "generator": self.generator.get_state(),
            "profile": self.profile.state_dict(),
            "grouped": self.grouped.state_dict(),
            "param_grouped": self.param_grouped.state_dict(),
            "costs": self.costs.state_dict(),
            "history": [r.to_dict() for r in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (including its config: a differently configured controller becomes
        the saved one, as with PyTorch schedulers)."""
        if self._pending is not None:
            raise StateError("load_state_dict() in the middle of a step: call it between steps")
        required = {
            "config",
            "step",
            "K",
            "N",
            "proposal_kind",
            "probs",
            "generator",
            "profile",
            "grouped",
            "param_grouped",
            "costs",
            "history",
            "refits_since_k_change",
            "stage_roles",
            "prior_pmf",
        }
        missing = required - set(state)
        if missing:
            raise StateError(f"controller state is missing {sorted(missing)}")
        self.config = parse_config(dict(state["config"], warmup_k=tuple(state["config"]["warmup_k"])))
        self._extra_roles = dict(state["stage_roles"])
        self._prior_pmf = None if state["prior_pmf"] is None else torch.as_tensor(state["prior_pmf"]).double()
        self.rank = int(state.get("rank", self.rank))
        self._build()
        self._step, self._K, self._N = int(state["step"]), int(state["K"]), int(state["N"])
        self._proposal_kind = str(state["proposal_kind"])
        self._probs = torch.as_tensor(state["probs"], dtype=torch.float64).clone()
        self._refits_since_k_change = int(state["refits_since_k_change"])
        self._from_policy = bool(state.get("from_policy", False))
        self.generator.set_state(state["generator"])
        self.profile.load_state_dict(state["profile"])
        self.grouped.load_state_dict(state["grouped"])
        self.param_grouped.load_state_dict(state["param_grouped"])
        self.costs.load_state_dict(state["costs"])
        self.history = [Refit(**r) for r in state["history"]]
        self._proposal_obj = None

    def summary(self) -> str:
        """One line: step, K, N, proposal entropy-free description and the estimated ECM."""
        top = int(torch.argmax(self._probs))
        lo, hi = int(self.edges[top]), int(self.edges[top + 1]) - 1
        return (
            f"step {self._step}: N={self._N} K={self._K} proposal={self._proposal_kind} "
            f"(max {float(self._probs[top]):.3f} on t in [{lo},{hi}] vs pi {float(self.pi_b[top]):.3f}) "
            f"ECM~{self.estimated_ecm:.2f}"
        )
