"""Closed-form offline fit of K* and the proposal from a logged refit record (SPEC §4-§5, §9)."""

from __future__ import annotations

import math
from typing import Any

import torch

from carv_adapt.closed_form import FitInputs, FitResult, fit_policy
from carv_adapt.errors import ConfigError
from carv_adapt.plan import Refit
from carv_adapt.policy import AllocationSpec, BinnedSpec, Policy, Safeguards, TargetSpec

__all__ = ["fit_from_record", "policy_from_record"]


def _pi_b(record: Refit) -> torch.Tensor:
    e = torch.tensor(record.bin_edges, dtype=torch.float64)
    w = e[1:] - e[:-1]
    return w / w.sum()


def fit_from_record(
    record: Refit,
    *,
    alpha: float = 0.1,
    smoothing: int = 0,
    k_min: int = 1,
    k_max: int = 64,
    mode: str = "fixed_batch",
    budget: float | None = None,
) -> FitResult:
    """The closed-form policy for one record's statistics, with no damping (thresholds 0, no move cap)."""
    for name in ("sigma_b2", "sigma_w2", "c_out", "c_in"):
        v = getattr(record, name)
        if not math.isfinite(v):
            raise ConfigError(f"refit record at step {record.step}: {name}={v!r} is not finite; log more steps first")
    M2 = float(record.extra.get("M2", 0.0))
    return fit_policy(
        FitInputs(
            pi_b=_pi_b(record),
            m_b=torch.tensor(record.profile, dtype=torch.float64),
            p_cur=torch.tensor(record.proposal, dtype=torch.float64),
            K_cur=record.K,
            sigma_b2=record.sigma_b2,
            sigma_w2=record.sigma_w2,
            M2=0.0 if not math.isfinite(M2) else M2,
            c_0=record.c_0,
            c_out=record.c_out,
            c_in=record.c_in,
            mode=mode,
            N=record.N,
            budget=budget,
            k_min=k_min,
            k_max=k_max,
            alpha=alpha,
            smoothing=smoothing,
            max_move=1.0,
            k_threshold=0.0,
            proposal_threshold=0.0,
        )
    )


def policy_from_record(
    record: Refit,
    num_timesteps: int = 1000,
    *,
    adaptive: bool = False,
    provenance: dict[str, Any] | None = None,
    safeguards: Safeguards | None = None,
    **fit_kwargs: Any,
) -> Policy:
    """A :class:`Policy` holding the closed-form fit of ``record`` (frozen by default)."""
    res = fit_from_record(record, **fit_kwargs)
    s = safeguards or Safeguards(alpha=fit_kwargs.get("alpha", 0.1), smoothing=fit_kwargs.get("smoothing", 0))
    return Policy(
        target=TargetSpec(num_timesteps=num_timesteps, t_min=record.bin_edges[0], t_max=record.bin_edges[-1] - 1),
        allocation=AllocationSpec(
            K=res.K, N=res.N, k_min=fit_kwargs.get("k_min", 1), k_max=fit_kwargs.get("k_max", 64)
        ),
        proposal=BinnedSpec(bin_edges=list(record.bin_edges), probs=res.p.tolist()),
        num_bins=len(record.proposal),
        adaptive=adaptive,
        safeguards=s,
        provenance=dict(provenance or {}, fitted_from_step=record.step, predicted_ecm=res.ecm, predicted_W=res.W),
    )
