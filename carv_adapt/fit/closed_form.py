"""Closed-form offline fit from a logged refit record (docs/theory.md §9): the controller's own decision
function, undamped, on the record's statistics."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from carv_adapt.config import ControllerConfig
from carv_adapt.decide import Decision, DecisionState, decide
from carv_adapt.errors import ConfigError
from carv_adapt.plan import Refit
from carv_adapt.policy import BinnedSpec, Policy, Safeguards
from carv_adapt.stats.costs import CostEstimate
from carv_adapt.stats.grouped import BetweenWithin
from carv_adapt.stats.snapshot import Statistics

__all__ = ["fit_from_record", "policy_from_record", "record_statistics", "record_policy"]


def record_statistics(record: Refit) -> Statistics:
    """The statistics ``record``'s decision read; for logs written before records carried them, rebuilt from the
    record's fields (between/within in the record's space, the proxy profile for the proposal's shape)."""
    if record.statistics:
        return Statistics.from_dict(record.statistics)
    e = torch.tensor(record.bin_edges, dtype=torch.float64)
    width = e[1:] - e[:-1]
    nan = math.nan
    M2 = float(record.extra.get("M2", nan))
    space = record.extra.get("space", record.space)
    bw = BetweenWithin(record.sigma_b2, 0.0, record.sigma_w2, 0.0, record.sigma_w2, nan, 1.0, M2, 1.0)
    proxy = bw if space == "proxy" else BetweenWithin(nan, 0.0, nan, 0.0, nan, nan, 1.0, M2, 1.0)
    counts = torch.tensor(record.profile_counts, dtype=torch.float64)
    return Statistics(
        pi_b=width / width.sum(),
        m=torch.tensor(record.profile, dtype=torch.float64),
        m_se=torch.zeros_like(counts),
        counts=counts,
        proxy=proxy,
        param=None if space == "proxy" else bw,
        costs=CostEstimate(record.c_0, record.c_out, record.c_in, steps=1.0),
    )


def record_policy(record: Refit, num_timesteps: int | None = None, **settings: Any) -> Policy:
    """A policy matching ``record``'s target and bins, with ``settings`` by flat name (e.g. ``k_max=32``)."""
    from carv_adapt.config import parse_config

    T = num_timesteps if num_timesteps is not None else record.num_timesteps
    if T is None:
        raise ConfigError(f"refit record at step {record.step} does not say num_timesteps; pass it explicitly")
    base = {"num_timesteps": T, "t_min": record.bin_edges[0], "t_max": record.bin_edges[-1] - 1}
    base.update(num_bins=len(record.proposal), batch_size=record.N)
    base.update(settings)
    return parse_config(None, **base).policy


def fit_from_record(record: Refit, policy: Policy | None = None, **settings: Any) -> Decision:
    """The closed-form decision for ``record``'s statistics: :func:`~carv_adapt.decide.decide` without the online
    damping (no move cap, no cooldown), in the record's space, from the state the record started in. The
    confidence band stays: a frozen policy should not bet on a point estimate whose standard error dwarfs it
    (a between variance of 0.003 +- 0.03 would otherwise send K to its cap); ``confidence=0`` in ``settings``
    takes the point estimate."""
    for name in ("c_out", "c_in"):
        v = getattr(record, name)
        if not math.isfinite(v):
            raise ConfigError(f"refit record at step {record.step}: {name}={v!r} is not finite; log more steps first")
    policy = policy or record_policy(record, **settings)
    undamped = policy.safeguards.model_copy(update={"max_move": 1.0, "k_cooldown": 0, "provisional_share": 1.0})
    config = ControllerConfig(
        policy=policy.model_copy(update={"safeguards": undamped, "adaptive": True}),
        space="parameter" if record.space == "parameter" or record.extra.get("space") == "parameter" else "proxy",
    )
    if record.state:
        state = DecisionState.from_dict(record.state)
    else:
        probs = torch.tensor(record.proposal, dtype=torch.float64)
        state = DecisionState(K=record.K, N=record.N, probs=probs, proposal_kind="binned", refits_since_k_change=0)
    state = replace(state, k_decided=True)  # the band decides, not the point estimate a first refit would take
    stats = record_statistics(record)
    if stats.pi_b.numel() != state.probs.numel():
        raise ConfigError(
            f"record at step {record.step}: {stats.pi_b.numel()} bins but a {state.probs.numel()}-bin state"
        )
    return decide(stats, state, config)


def policy_from_record(
    record: Refit,
    num_timesteps: int | None = None,
    *,
    adaptive: bool = False,
    provenance: dict[str, Any] | None = None,
    safeguards: Safeguards | None = None,
    **settings: Any,
) -> Policy:
    """A :class:`Policy` holding the closed-form fit of ``record`` (frozen by default); ``settings`` by flat name
    (``alpha``, ``k_max``, ``num_bins``, ``refit_every``...) configure both the fit and the policy."""
    policy = record_policy(record, num_timesteps, **settings)
    if safeguards is not None:
        policy = policy.model_copy(update={"safeguards": safeguards})
    fit = fit_from_record(record, policy)
    s = fit.state
    return policy.model_copy(
        update={
            "allocation": policy.allocation.model_copy(update={"K": s.K, "N": s.N}),
            "proposal": BinnedSpec(bin_edges=list(record.bin_edges), probs=s.probs.tolist()),
            "adaptive": adaptive,
            "provenance": dict(
                provenance or {}, fitted_from_step=record.step, predicted_ecm=fit.ecm, predicted_W=fit.W
            ),
        }
    )
