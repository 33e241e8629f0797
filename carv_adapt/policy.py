"""Policies as files (SPEC §9): a schema-versioned pydantic value with JSON save/load and migration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from carv_adapt.errors import ConfigError

__all__ = [
    "Policy",
    "TargetSpec",
    "AllocationSpec",
    "Safeguards",
    "BinnedSpec",
    "UniformSpec",
    "WeightedSpec",
    "SCHEMA_VERSION",
]

SCHEMA_VERSION = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetSpec(_Strict):
    """The target timestep measure ``pi``: uniform over ``[t_min, t_max]``."""

    num_timesteps: int = Field(1000, ge=1)
    t_min: int = Field(0, ge=0)
    t_max: int | None = None


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
    mode: Literal["fixed_batch", "fixed_budget"] = "fixed_batch"
    K: int = Field(1, ge=1)
    N: int = Field(1, ge=1)
    budget: float | None = Field(None, gt=0)
    k_min: int = Field(1, ge=1)
    k_max: int = Field(64, ge=1)


class Safeguards(_Strict):
    alpha: float = Field(0.1, ge=0.0, le=1.0)
    smoothing: int = Field(1, ge=0)
    prior_count: float = Field(5.0, ge=0.0)
    max_move: float = Field(0.25, gt=0.0, le=1.0)
    proposal_threshold: float = Field(0.01, ge=0.0)
    k_threshold: float = Field(0.05, ge=0.0)
    k_cooldown: int = Field(1, ge=0)
    forgetting: float = Field(0.99, gt=0.0, le=1.0)


class Policy(_Strict):
    """A serializable policy: allocation, proposal, stratification, safeguards and retune schedule.

    ``adaptive=False`` freezes it: a controller built from it plans with exactly this K and proposal.
    """

    schema_version: Literal[2] = SCHEMA_VERSION
    target: TargetSpec = TargetSpec()
    allocation: AllocationSpec = AllocationSpec()
    proposal: ProposalSpec = UniformSpec()
    stratification: Literal["auto", "iid", "stratified", "lattice", "global"] = "auto"
    antithetic: bool = False
    safeguards: Safeguards = Safeguards()
    num_bins: int = Field(20, ge=1)
    warmup_steps: int = Field(20, ge=1)
    refit_every: int = Field(10, ge=1)
    adaptive: bool = True
    provenance: dict[str, Any] = Field(default_factory=dict)

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
            raw = migrate_v1(raw)
        elif version != SCHEMA_VERSION:
            raise ConfigError(
                f"{source}: schema_version={version!r} is not supported (this carv_adapt reads 1 and "
                f"{SCHEMA_VERSION}); re-export the policy with a matching version"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            msgs = [f"{'.'.join(str(p) for p in err['loc'])}={err.get('input')!r}: {err['msg']}" for err in e.errors()]
            raise ConfigError(f"{source}: invalid policy: " + "; ".join(msgs)) from None

    # ------------------------------------------------------------------ controller
    def controller_config(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for :class:`~carv_adapt.controller.AdaptiveController`."""
        a, s = self.allocation, self.safeguards
        cfg = dict(
            num_timesteps=self.target.num_timesteps,
            t_min=self.target.t_min,
            t_max=self.target.t_max,
            num_bins=self.num_bins,
            allocation=a.mode,
            batch_size=a.N,
            budget=a.budget,
            k_min=a.k_min,
            k_max=a.k_max,
            warmup_steps=self.warmup_steps,
            refit_every=self.refit_every,
            adapt_k=self.adaptive,
            adapt_proposal=self.adaptive,
            stratification=self.stratification,
            antithetic=self.antithetic,
            **s.model_dump(),
        )
        cfg.update(overrides)
        return cfg

    def proposal_pmf(self) -> torch.Tensor:
        """The proposal as a ``T``-dim pmf over timesteps."""
        from carv_adapt.proposals import BinnedProposal, TargetMeasure, UniformProposal, WeightedProposal

        target = TargetMeasure(self.target.num_timesteps, self.target.t_min, self.target.t_max)
        p = self.proposal
        if isinstance(p, UniformSpec):
            return UniformProposal(target).pmf()
        if isinstance(p, BinnedSpec):
            return BinnedProposal(target, torch.tensor(p.bin_edges), torch.tensor(p.probs, dtype=torch.float64)).pmf()
        return WeightedProposal(target, torch.tensor(p.g, dtype=torch.float64)).pmf()


def migrate_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept ``K``, ``N``, ``bin_edges`` and ``probs`` at the top level and had no safeguards block."""
    known = {
        "schema_version",
        "K",
        "N",
        "bin_edges",
        "probs",
        "num_timesteps",
        "t_min",
        "t_max",
        "stratification",
        "alpha",
    }
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"schema_version 1 policy has unknown fields {sorted(unknown)}; cannot migrate it")
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
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
