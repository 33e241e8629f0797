"""The values :func:`~carv_adapt.decide.decide` reads and returns: the frozen :class:`DecisionState` a decision
starts from and the :class:`Decision` it makes (docs/theory.md §12). Data only: every rule is in ``decide``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Decision", "DecisionState"]


@dataclass(frozen=True)
class DecisionState:
    """What the next decision starts from: ``K``, ``N``, the ``B``-dim bin proposal ``probs`` and its kind
    (``"uniform" | "prior" | "binned"``), refits since the last ``K`` change, and one-time warnings given."""

    K: int
    N: int
    probs: Tensor
    proposal_kind: str
    refits_since_k_change: int
    refits: int = 0
    warned: tuple[str, ...] = ()
    k_decided: bool = False  # whether a refit has decided K (else it is the policy's or the warm-up cycle's)

    def to_dict(self) -> dict[str, Any]:
        return {
            "K": self.K,
            "N": self.N,
            "probs": self.probs.tolist(),
            "proposal_kind": self.proposal_kind,
            "refits_since_k_change": self.refits_since_k_change,
            "refits": self.refits,
            "warned": list(self.warned),
            "k_decided": self.k_decided,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecisionState:
        return cls(
            K=int(d["K"]),
            N=int(d["N"]),
            probs=torch.as_tensor(d["probs"], dtype=torch.float64).clone(),
            proposal_kind=str(d["proposal_kind"]),
            refits_since_k_change=int(d["refits_since_k_change"]),
            refits=int(d.get("refits", 0)),
            warned=tuple(d.get("warned", ())),
            k_decided=bool(d.get("k_decided", int(d.get("refits", 0)) > 0)),  # older states: after any refit
        )


@dataclass(frozen=True)
class Decision:
    """One decision: the new state, what the variance model predicts for it, and every reason.

    ``k_interval`` is the confidence band ``[K_lo, K_hi]`` of ``K*`` (R5); ``sigma_w2`` is the within variance
    measured under the proposal in force before, ``predicted_sigma_w2`` the chosen policy's. ``warnings`` are
    new one-time warnings the caller should emit. ``G2`` is ``|G|^2`` in the decision's space and metric,
    ``noise_scale`` the gradient noise scale ``tr(Sigma_1)/|G|^2`` of one outer draw's estimate at the chosen K,
    ``v_over_g2`` the chosen estimator's ``V/|G|^2``, ``progress_gain`` its predicted progress per second over
    the baseline (``K = 1``, ``p = pi``) (docs/theory.md §13). ``sigma_b2_design`` is the between variance ``K*``,
    ``W`` and ``V`` used: the outer design's (docs/theory.md §15) where measured, else ``sigma_b2``; ``W_baseline``
    always uses the i.i.d. ``sigma_b2``.
    """

    state: DecisionState
    space: str
    sigma_b2: float
    sigma_b2_se: float
    sigma_w2: float
    predicted_sigma_w2: float
    sigma_w2_uniform: float
    k_interval: tuple[int, int]
    W: float
    W_baseline: float
    ecm: float
    is_gain: float
    k_changed: bool
    proposal_changed: bool
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())
    G2: float = math.nan
    G2_se: float = math.inf
    noise_scale: float = math.nan
    v_over_g2: float = math.nan
    progress_gain: float = math.nan
    sigma_b2_design: float = math.nan

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)
