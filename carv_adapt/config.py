"""The controller's configuration (STYLE §8): a pydantic v2 model, ``extra="forbid"``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from carv_adapt.errors import ConfigError

__all__ = ["ControllerConfig", "parse_config"]


class ControllerConfig(BaseModel):
    """Settings of :class:`~carv_adapt.controller.AdaptiveController` (SPEC §4-§8).

    Timesteps: the target ``pi`` is uniform over ``[t_min, t_max]`` of ``num_timesteps``; the proposal is
    piecewise constant over ``num_bins`` bins. Allocation: ``fixed_batch`` keeps ``batch_size`` outer
    draws and picks ``K``; ``fixed_budget`` picks ``K`` and ``N`` for ``budget`` seconds per step.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    num_timesteps: int = Field(1000, ge=1)
    t_min: int = Field(0, ge=0)
    t_max: int | None = Field(None, ge=0, description="inclusive; default num_timesteps - 1")
    num_bins: int = Field(20, ge=1)

    allocation: Literal["fixed_batch", "fixed_budget"] = "fixed_batch"
    batch_size: int = Field(1, ge=1, description="N under fixed_batch (and during warm-up)")
    budget: float | None = Field(None, gt=0, description="seconds per step under fixed_budget")
    k_min: int = Field(1, ge=1)
    k_max: int = Field(64, ge=1)
    warmup_k: tuple[int, ...] = Field((2, 4), min_length=1, description="K cycled through during warm-up")

    memory_cap_bytes: int | None = Field(None, gt=0, description="memory for the N K inner draws of a step")
    inner_bytes: int | None = Field(None, gt=0, description="bytes one inner draw needs (see measure_inner_bytes)")

    warmup_steps: int = Field(20, ge=1)
    refit_every: int = Field(10, ge=1)
    adapt_k: bool = True
    adapt_proposal: bool = True
    warmup_proposal: Literal["uniform", "prior"] = "uniform"
    stratification: Literal["auto", "iid", "stratified", "lattice", "global"] = "auto"
    antithetic: bool = False

    alpha: float = Field(0.1, ge=0.0, le=1.0, description="defensive mixture weight of pi")
    smoothing: int = Field(1, ge=0, description="profile smoothing radius in bins")
    prior_count: float = Field(5.0, ge=0.0, description="pseudo-observations shrinking sparse bins to the mean")
    max_move: float = Field(0.25, gt=0.0, le=1.0, description="max TV move of the proposal per refit")
    proposal_threshold: float = Field(0.01, ge=0.0, description="min relative gain in E[rho^2 m] to switch")
    k_threshold: float = Field(0.05, ge=0.0, description="min relative gain in W to change K")
    k_cooldown: int = Field(1, ge=0, description="refits to wait after a K change")
    forgetting: float = Field(0.99, gt=0.0, le=1.0, description="per-step decay of the statistics")

    space: Literal["proxy", "parameter"] = Field(
        "proxy", description="where K* takes sigma_B^2 / sigma_W^2 from (parameter needs probe observations)"
    )
    nonfinite: Literal["skip", "error"] = "skip"
    seed: int = 0

    @field_validator("warmup_k")
    @classmethod
    def _warmup_k_positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in v):
            raise ValueError(f"every warm-up K must be >= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ControllerConfig:
        t_max = self.num_timesteps - 1 if self.t_max is None else self.t_max
        if not (self.t_min <= t_max < self.num_timesteps):
            raise ValueError(
                f"need t_min <= t_max < num_timesteps, got t_min={self.t_min}, t_max={t_max}, "
                f"num_timesteps={self.num_timesteps}"
            )
        if self.num_bins > t_max + 1 - self.t_min:
            raise ValueError(f"num_bins={self.num_bins} exceeds the {t_max + 1 - self.t_min} timesteps in range")
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        if (self.memory_cap_bytes is None) != (self.inner_bytes is None):
            raise ValueError("memory_cap_bytes and inner_bytes go together: set both or neither")
        if self.allocation == "fixed_budget" and self.budget is None:
            raise ValueError("allocation='fixed_budget' needs budget (seconds per step)")
        return self


def parse_config(data: dict | ControllerConfig | None = None, **overrides: object) -> ControllerConfig:
    """Validate a config, turning pydantic's error into a :class:`ConfigError` that names each bad field."""
    if isinstance(data, ControllerConfig) and not overrides:
        return data
    raw = dict(data.model_dump() if isinstance(data, ControllerConfig) else (data or {}))
    raw.update(overrides)
    try:
        return ControllerConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"]) or "config"
            hint = " (unknown field: check the spelling)" if err["type"] == "extra_forbidden" else ""
            lines.append(f"{field}={err.get('input')!r}: {err['msg']}{hint}")
        raise ConfigError("invalid ControllerConfig: " + "; ".join(lines)) from None
