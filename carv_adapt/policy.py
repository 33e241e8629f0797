"""The one schema of every setting (docs/theory.md §9): a schema-versioned pydantic value, saved as JSON.

A :class:`Policy` holds the target, the bins, the allocation, the proposal, the sampling design, the
safeguards and the retune schedule. The controller's configuration composes it with run-time fields
(:class:`~carv_adapt.config.ControllerConfig`); nothing here is declared twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from carv_adapt.errors import ConfigError
from carv_adapt.outer import OuterDesign

__all__ = [
    "Policy",
    "TargetSpec",
    "AllocationSpec",
    "Safeguards",
    "ScheduleSpec",
    "BinnedSpec",
    "UniformSpec",
    "WeightedSpec",
    "StratificationMode",
    "SCHEMA_VERSION",
    "validation_message",
]

SCHEMA_VERSION = 3

StratificationMode = Literal["auto", "iid", "stratified", "lattice", "global"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetSpec(_Strict):
    """The target timestep measure ``pi``: uniform over ``[t_min, t_max]`` of ``num_timesteps``."""

    num_timesteps: int = Field(1000, ge=1)
    t_min: int = Field(0, ge=0)
    t_max: int | None = Field(None, ge=0, description="inclusive; default num_timesteps - 1")

    @property
    def last(self) -> int:
        return self.num_timesteps - 1 if self.t_max is None else self.t_max

    @model_validator(mode="after")
    def _range(self) -> TargetSpec:
        if not (self.t_min <= self.last < self.num_timesteps):
            raise ValueError(
                f"need t_min <= t_max < num_timesteps, got t_min={self.t_min}, t_max={self.last}, "
                f"num_timesteps={self.num_timesteps}"
            )
        return self


class UniformSpec(_Strict):
    kind: Literal["uniform"] = "uniform"


class BinnedSpec(_Strict):
    """Piecewise-constant proposal: bin masses over ``[edges[b], edges[b+1])``, ``∝ pi`` inside each bin."""

    kind: Literal["binned"] = "binned"
    bin_edges: list[int] = Field(min_length=2)
    probs: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _shape(self) -> BinnedSpec:
        if len(self.bin_edges) != len(self.probs) + 1:
            raise ValueError(
                f"bin_edges has {len(self.bin_edges)} entries, needs len(probs) + 1 = {len(self.probs) + 1}"
            )
        if any(b <= a for a, b in zip(self.bin_edges, self.bin_edges[1:])):
            raise ValueError(f"bin_edges must increase strictly, got {self.bin_edges}")
        if any(p < 0 for p in self.probs) or sum(self.probs) <= 0:
            raise ValueError(f"probs must be >= 0 and not all 0, got {self.probs}")
        return self


class WeightedSpec(_Strict):
    """Analytic family ``q ∝ pi g`` (e.g. the teacher-weight prior), ``g`` given per timestep."""

    kind: Literal["weighted"] = "weighted"
    g: list[float] = Field(min_length=1)


ProposalSpec = Annotated[UniformSpec | BinnedSpec | WeightedSpec, Field(discriminator="kind")]


class AllocationSpec(_Strict):
    """How ``N`` and ``K`` are chosen (docs/theory.md §4).

    ``K`` is the starting (or, frozen, the only) inner count; ``None`` cycles ``warmup_k`` during the warm-up,
    so the cost fit sees several ``N K``.
    """

    mode: Literal["fixed_batch", "fixed_budget"] = "fixed_batch"
    objective: Literal["variance", "progress"] = Field(
        "variance", description="minimize variance x compute, or seconds per unit of expected progress (§13)"
    )
    N: int = Field(1, ge=1, description="outer draws per step under fixed_batch (and during warm-up)")
    K: int | None = Field(None, ge=1, description="starting K; None cycles warmup_k during the warm-up")
    budget: float | None = Field(None, gt=0, description="seconds per step under fixed_budget")
    k_min: int = Field(1, ge=1)
    k_max: int = Field(64, ge=1)
    warmup_k: tuple[int, ...] = Field((2, 4), min_length=1, description="K cycled through during warm-up")

    @field_validator("warmup_k")
    @classmethod
    def _warmup_k_positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in v):
            raise ValueError(f"every warm-up K must be >= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AllocationSpec:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        if self.mode == "fixed_budget" and self.budget is None:
            raise ValueError("mode='fixed_budget' needs budget (seconds per step)")
        return self


class Safeguards(_Strict):
    """Damping of the decisions (docs/theory.md §12). Each regularizer fades as evidence accumulates."""

    alpha: float = Field(0.1, ge=0.0, le=1.0, description="defensive mixture weight of pi (rho <= 1/alpha)")
    smoothing: int = Field(1, ge=0, description="radius (bins) of the local smooth noisy bins shrink toward")
    max_move: float = Field(0.25, gt=0.0, le=1.0, description="TV cap on a proposal move the evidence cannot back")
    confidence: float = Field(2.0, ge=0.0, description="z: a change must beat z standard errors of its gain")
    k_cooldown: int = Field(1, ge=0, description="refits to wait after a K change")
    provisional_share: float = Field(
        0.25, ge=0.0, le=1.0, description="K follows its point estimate while the warm-up holds more weight (1: off)"
    )
    forgetting: float = Field(0.99, gt=0.0, le=1.0, description="per-step decay of the statistics")


class ScheduleSpec(_Strict):
    """When the controller refits and what it may change (docs/theory.md §8)."""

    warmup_steps: int = Field(20, ge=1)
    refit_every: int = Field(10, ge=1)
    warmup_proposal: Literal["uniform", "prior"] = "uniform"
    adapt_k: bool = True
    adapt_proposal: bool = True
    probe_tolerance: float = Field(
        0.2,
        gt=0.0,
        description="probe every step while the probe statistics' relative standard error (times forgetting^(-s/2), "
        "s steps after the last probe) exceeds this",
    )
    probe_budget: float = Field(0.03, gt=0.0, le=1.0, description="largest share of compute the probes may take")
    probe_every_max: int = Field(
        64, ge=1, description="probe at least this often, unless one probe in this many steps exceeds the budget"
    )


class Policy(_Strict):
    """A serializable policy: allocation, proposal, sampling design, safeguards and retune schedule.

    ``adaptive=False`` freezes it: a controller built from it plans with exactly this K and proposal;
    refits still record statistics.
    """

    schema_version: Literal[3] = SCHEMA_VERSION
    target: TargetSpec = TargetSpec()
    num_bins: int = Field(20, ge=1)
    allocation: AllocationSpec = AllocationSpec()
    proposal: ProposalSpec = UniformSpec()
    stratification: StratificationMode = "auto"
    antithetic: bool = False
    outer: OuterDesign = Field("iid", description="design of the plan's outer uniforms plan.outer_u (§15)")
    safeguards: Safeguards = Safeguards()
    schedule: ScheduleSpec = ScheduleSpec()
    adaptive: bool = True
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bins_fit(self) -> Policy:
        width = self.target.last + 1 - self.target.t_min
        if self.num_bins > width:
            raise ValueError(f"num_bins={self.num_bins} exceeds the {width} timesteps in range")
        if isinstance(self.proposal, WeightedSpec) and len(self.proposal.g) != self.target.num_timesteps:
            raise ValueError(
                f"weighted proposal g has {len(self.proposal.g)} entries, needs num_timesteps="
                f"{self.target.num_timesteps}"
            )
        return self

    @property
    def adapts_k(self) -> bool:
        return self.adaptive and self.schedule.adapt_k

    @property
    def adapts_proposal(self) -> bool:
        return self.adaptive and self.schedule.adapt_proposal

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy file, migrating older schema versions; errors name the field and the file."""
        try:
            raw = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); is the file corrupted?") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "policy") -> Policy:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: a policy is a JSON object, got {type(raw).__name__}")
        version = raw.get("schema_version")
        if version == 1:
            raw = migrate_v2(migrate_v1(raw))
        elif version == 2:
            raw = migrate_v2(raw)
        elif version != SCHEMA_VERSION:
            raise ConfigError(
                f"{source}: schema_version={version!r} is not supported (this carv_adapt reads 1 to "
                f"{SCHEMA_VERSION}); re-export the policy with a matching version"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"{source}: invalid policy: {validation_message(e)}") from None

    # ------------------------------------------------------------------ derived
    def target_measure(self) -> Any:
        from carv_adapt.proposals import TargetMeasure

        return TargetMeasure(self.target.num_timesteps, self.target.t_min, self.target.t_max)

    def proposal_pmf(self) -> torch.Tensor:
        """The proposal as a ``T``-dim pmf over timesteps."""
        from carv_adapt.proposals import BinnedProposal, UniformProposal, WeightedProposal

        target, p = self.target_measure(), self.proposal
        if isinstance(p, UniformSpec):
            return UniformProposal(target).pmf()
        if isinstance(p, BinnedSpec):
            return BinnedProposal(target, torch.tensor(p.bin_edges), torch.tensor(p.probs, dtype=torch.float64)).pmf()
        return WeightedProposal(target, torch.tensor(p.g, dtype=torch.float64)).pmf()


def validation_message(e: ValidationError, names: dict[tuple[str, ...], str] | None = None) -> str:
    """pydantic's errors as ``field=value: message`` items, naming unknown fields as such; ``names`` maps a
    field's path to the name the caller used for it (a flat keyword)."""
    lines = []
    for err in e.errors():
        loc = tuple(str(p) for p in err["loc"])
        field = (names or {}).get(loc) or ".".join(loc) or "value"
        hint = " (unknown field: check the spelling)" if err["type"] == "extra_forbidden" else ""
        lines.append(f"{field}={err.get('input')!r}: {err['msg']}{hint}")
    return "; ".join(lines)


def migrate_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept ``K``, ``N``, ``bin_edges`` and ``probs`` at the top level and had no safeguards block."""
    known = {"schema_version", "K", "N", "bin_edges", "probs", "num_timesteps", "t_min", "t_max"}
    known |= {"stratification", "alpha"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"schema_version 1 policy has unknown fields {sorted(unknown)}; cannot migrate it")
    out: dict[str, Any] = {
        "schema_version": 2,
        "target": {k: raw[k] for k in ("num_timesteps", "t_min", "t_max") if k in raw},
        "allocation": {"K": raw.get("K", 1), "N": raw.get("N", 1)},
        "provenance": {"migrated_from": 1},
    }
    if "bin_edges" in raw or "probs" in raw:
        out["proposal"] = {"kind": "binned", "bin_edges": raw.get("bin_edges"), "probs": raw.get("probs")}
        out["num_bins"] = len(raw.get("probs") or [0])
    if "stratification" in raw:
        out["stratification"] = raw["stratification"]
    if "alpha" in raw:
        out["safeguards"] = {"alpha": raw["alpha"]}
    return out


# Version 2 knobs replaced by evidence-dependent rules (docs/theory.md §12): dropped, and noted in provenance.
_V2_DROPPED = ("prior_count", "proposal_threshold", "k_threshold")


def migrate_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 2 kept the schedule at the top level and had fixed thresholds in the safeguards."""
    out = {k: v for k, v in raw.items() if k not in ("warmup_steps", "refit_every")}
    out["schema_version"] = SCHEMA_VERSION
    out["schedule"] = {k: raw[k] for k in ("warmup_steps", "refit_every") if k in raw}
    safeguards = dict(raw.get("safeguards") or {})
    dropped = {k: safeguards.pop(k) for k in _V2_DROPPED if k in safeguards}
    out["safeguards"] = safeguards
    provenance = dict(raw.get("provenance") or {})
    provenance.setdefault("migrated_from", 2)
    if dropped:
        provenance["dropped_settings"] = dropped
    out["provenance"] = provenance
    return out
