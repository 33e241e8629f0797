"""The :class:`~carv_adapt.plan.Refit` record of one decision: what it saw, chose and predicts (§12, R8)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from carv_adapt.decide import Decision, DecisionState
from carv_adapt.plan import Refit
from carv_adapt.stats.snapshot import Statistics

__all__ = ["refit_record", "policy_snapshot", "summary_line"]


def refit_record(
    step: int,
    stats: Statistics,
    before: DecisionState,
    decision: Decision,
    edges: Tensor,
    num_timesteps: int,
    extra: dict[str, Any] | None = None,
) -> Refit:
    """The record of ``decision``, taken at ``step`` from ``stats`` and the state ``before`` it."""
    s, c = decision.state, stats.costs
    return Refit(
        step=step,
        K=s.K,
        N=s.N,
        proposal=s.probs.tolist(),
        bin_edges=edges.tolist(),
        profile=stats.m.tolist(),
        profile_counts=stats.counts.tolist(),
        sigma_b2=decision.sigma_b2,
        sigma_w2=decision.sigma_w2,
        c_0=c.c_0,
        c_out=c.c_out,
        c_in=c.c_in,
        predicted_W=decision.W,
        predicted_W_baseline=decision.W_baseline,
        predicted_ecm=decision.ecm,
        is_gain=decision.is_gain,
        k_changed=decision.k_changed,
        proposal_changed=decision.proposal_changed,
        reason=decision.reason,
        extra={
            "space": decision.space,
            "sigma_b2_se": decision.sigma_b2_se,
            "M2": stats.proxy.M2,
            "phi": stats.proxy.phi,
            "probe_seconds_per_step": c.measurement,
            "G2": decision.G2,
            "G2_se": decision.G2_se,
            "noise_scale": decision.noise_scale,
            "v_over_g2": decision.v_over_g2,
            "progress_gain": decision.progress_gain,
            "sigma_b2_design": decision.sigma_b2_design,
            **(extra or {}),
        },
        num_timesteps=num_timesteps,
        space=decision.space,
        predicted_sigma_w2=decision.predicted_sigma_w2,
        k_interval=list(decision.k_interval),
        statistics=stats.to_dict(),
        state=before.to_dict(),
    )


def policy_snapshot(
    policy: Any, state: DecisionState, edges: Tensor, adaptive: bool, provenance: dict[str, Any]
) -> Any:
    """``policy`` with the state's ``K``, ``N`` and proposal (binned over ``edges``) in force."""
    from carv_adapt.policy import BinnedSpec, UniformSpec

    proposal = (
        UniformSpec()
        if state.proposal_kind == "uniform"
        else BinnedSpec(bin_edges=edges.tolist(), probs=state.probs.tolist())
    )
    allocation = policy.allocation.model_copy(update={"K": state.K, "N": state.N})
    return policy.model_copy(
        update={"allocation": allocation, "proposal": proposal, "adaptive": adaptive, "provenance": provenance}
    )


def summary_line(step: int, state: DecisionState, edges: Tensor, pi_b: Tensor, ecm: float) -> str:
    """``step s: N=.. K=.. proposal=kind (max p on t in [a,b] vs pi) ECM~e``."""
    top = int(torch.argmax(state.probs))
    lo, hi = int(edges[top]), int(edges[top + 1]) - 1
    return (
        f"step {step}: N={state.N} K={state.K} proposal={state.proposal_kind} "
        f"(max {float(state.probs[top]):.3f} on t in [{lo},{hi}] vs pi {float(pi_b[top]):.3f}) ECM~{ecm:.2f}"
    )
