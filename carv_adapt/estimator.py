"""The hierarchical N x K estimator (docs/theory.md §2), usable without any adaptivity."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from carv_adapt.crn import CRNGroup, plan_from_state, plan_state
from carv_adapt.errors import ConfigError, ShapeError, StateError
from carv_adapt.outer import check_outer_design
from carv_adapt.plan import Plan, make_plan
from carv_adapt.proposals.base import Proposal, TargetMeasure
from carv_adapt.proposals.families import UniformProposal

__all__ = ["Estimate", "hierarchical_estimate", "HierarchicalEstimator"]

Upstream = Callable[[Plan], Tensor]
Integrand = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Estimate:
    """One hierarchical estimate and what produced it.

    Attributes:
        value: ``1/(N K) sum_nk rho_nk f_nk`` (shape of one contribution).
        contributions: ``N x K x ...`` rho-free ``f`` (what :meth:`AdaptiveController.observe` takes).
        outer: the upstream output ``N x ...``.
        plan: the plan it was computed under.
    """

    value: Tensor
    contributions: Tensor
    outer: Tensor
    plan: Plan

    @property
    def weighted(self) -> Tensor:
        """``N x K x ...`` ``rho f``."""
        return self.plan.weights_like(self.contributions) * self.contributions

    def standard_error(self) -> float:
        """Standard error of ``value`` (root of the trace of its covariance) from the ``N`` outer means.

        Valid because outer draws are independent and each outer mean is unbiased; NaN when ``N = 1``. Under a
        stratified or antithetic outer design (docs/theory.md §15) the draws are dependent and this over- or
        under-states it; use independent replications there.
        """
        n = self.plan.N
        if n < 2:
            return math.nan
        means = self.weighted.reshape(n, self.plan.K, -1).double().mean(dim=1)
        return math.sqrt(float(((means - means.mean(0)) ** 2).sum()) / (n * (n - 1)))


def hierarchical_estimate(
    upstream: Upstream, integrand: Integrand, plan: Plan, noise_shape: tuple[int, ...] | None = None
) -> Estimate:
    """Run one ``N x K`` estimate: ``x = upstream(plan)`` (``N x ...``), ``eps = plan.noise(...)``,
    ``f = integrand(x, plan.t, eps)`` (``N x K x ...``), value ``= mean(rho f)`` (docs/theory.md §2).

    ``noise_shape`` defaults to the per-draw shape of ``x`` (noise lives where the teacher noises ``x``).
    """
    x = upstream(plan)
    if x.shape[0] != plan.N:
        raise ShapeError(f"upstream returned {x.shape[0]} outer draws, plan asks for N={plan.N}")
    eps = plan.noise(
        noise_shape if noise_shape is not None else tuple(x.shape[1:]),
        device=x.device,
        dtype=x.dtype if x.is_floating_point() else torch.float32,
    )
    f = integrand(x, plan.t.to(x.device), eps)
    if tuple(f.shape[:2]) != (plan.N, plan.K):
        raise ShapeError(f"integrand returned shape {tuple(f.shape)}, expected N x K x ... = {(plan.N, plan.K)}")
    return Estimate(value=plan.weighted_mean(f), contributions=f, outer=x, plan=plan)


class HierarchicalEstimator:
    """A fixed (non-adaptive) policy: ``N`` outer draws, ``K`` inner draws each, timesteps from ``proposal``.

    Args:
        proposal: timestep proposal (default: the target itself, plain Monte Carlo).
        target: target measure when ``proposal`` is not given (default uniform over 1000 steps).
        N, K: outer and inner draws per estimate.
        stratification: ``"auto" | "iid" | "stratified" | "lattice" | "global"`` (docs/theory.md §6).
        antithetic: pair noises ``(eps, -eps)`` along ``K``.
        outer: design of the plans' outer uniforms ``plan.outer_u`` (``"iid" | "stratified" | "antithetic"``, §15).
        seed: seeds this estimator's own generator (state in :meth:`state_dict`).
    """

    def __init__(
        self,
        proposal: Proposal | None = None,
        *,
        target: TargetMeasure | None = None,
        N: int = 1,
        K: int = 1,
        stratification: str = "auto",
        antithetic: bool = False,
        outer: str = "iid",
        seed: int = 0,
    ) -> None:
        if N < 1 or K < 1:
            raise ConfigError(f"N and K must be >= 1, got N={N!r}, K={K!r}")
        self.proposal = proposal if proposal is not None else UniformProposal(target or TargetMeasure())
        self.N, self.K = N, K
        self.stratification, self.antithetic = stratification, antithetic
        check_outer_design(outer)
        self.outer = outer
        self.generator = torch.Generator().manual_seed(seed)
        self._step = 0
        self._last: Plan | None = None
        self._crn: CRNGroup | None = None

    def plan(self) -> Plan:
        """The next plan: fresh draws, or inside a :meth:`crn_group` a replay of the group's draws."""

        def draw() -> Plan:
            return make_plan(
                self.proposal,
                self.N,
                self.K,
                self.generator,
                step=self._step,
                stratification=self.stratification,
                antithetic=self.antithetic,
                outer=self.outer,
            )

        p = draw() if self._crn is None else self._crn.plan_for(self._step, draw)
        self._last = p
        self._step += 1
        return p

    def replay(self) -> Plan:
        """The last plan's draws again, as the next step (common random numbers, docs/theory.md §18): bit-identical
        ``t``, ``rho`` and noises; the generator does not move."""
        if self._last is None:
            raise StateError("replay() before any plan(): call plan() for the first item, then replay() for the rest")
        p = self._last.replay(self._step)
        self._last = p
        self._step += 1
        return p

    def crn_group(self, items: int) -> CRNGroup:
        """From the next plan on, every ``items`` consecutive plans share one set of draws (docs/theory.md §18),
        until the returned group is closed (also at the end of a ``with`` block)."""
        return CRNGroup.open_on(self, items, center=False)

    def estimate(
        self, upstream: Upstream, integrand: Integrand, noise_shape: tuple[int, ...] | None = None
    ) -> Estimate:
        """Draw a plan and run :func:`hierarchical_estimate` under it."""
        return hierarchical_estimate(upstream, integrand, self.plan(), noise_shape)

    def state_dict(self) -> dict:
        """Step, generator, the last plan (what :meth:`replay` repeats) and an open crn group, as plain data."""
        return {
            "step": self._step,
            "generator": self.generator.get_state(),
            "last_plan": None if self._last is None else plan_state(self._last),
            "crn": None if self._crn is None else self._crn.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self._step = int(state["step"])
        self.generator.set_state(state["generator"])
        last, crn = state.get("last_plan"), state.get("crn")  # absent in states saved before replay existed
        self._last = None if last is None else plan_from_state(last)
        CRNGroup.restore_on(self, crn)
