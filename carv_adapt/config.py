"""The controller's configuration: a :class:`~carv_adapt.policy.Policy` plus run-time fields (STYLE §17).

Every setting is declared once, in the policy's schema or here (run-time only: seed, space, non-finite
handling, memory). Flat keyword arguments (``AdaptiveController(k_max=32, batch_size=4)``) are resolved by
name against the schema itself, so a new policy field needs no translation code.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from carv_adapt.errors import ConfigError
from carv_adapt.policy import Policy, validation_message

__all__ = ["ControllerConfig", "parse_config", "flat_fields"]


class ControllerConfig(BaseModel):
    """Settings of :class:`~carv_adapt.controller.AdaptiveController`: ``policy`` and the run-time fields.

    ``space`` is where ``K*`` takes ``sigma_B^2`` / ``sigma_W^2`` from (``"parameter"`` needs split-half probe
    observations); ``memory_cap_bytes`` with ``inner_bytes`` bounds ``N K`` (docs/theory.md §12, R6).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy = Policy()
    space: Literal["proxy", "parameter"] = "proxy"
    metric: Literal["euclidean", "preconditioned"] = Field(
        "euclidean", description="the metric of probe gradients; preconditioned needs the optimizer (§13)"
    )
    nonfinite: Literal["skip", "error"] = "skip"
    seed: int = 0
    memory_cap_bytes: int | None = Field(None, gt=0, description="memory for the N K inner draws of a step")
    inner_bytes: int | None = Field(None, gt=0, description="bytes one inner draw needs (see measure_inner_bytes)")

    @model_validator(mode="after")
    def _memory_pair(self) -> ControllerConfig:
        if (self.memory_cap_bytes is None) != (self.inner_bytes is None):
            raise ValueError("memory_cap_bytes and inner_bytes go together: set both or neither")
        return self


# Names kept from the flat configuration of earlier versions; everything else is the schema's own leaf name.
_ALIASES = {"batch_size": ("policy", "allocation", "N"), "allocation": ("policy", "allocation", "mode")}
_OPAQUE = {"proposal", "provenance", "schema_version"}


@cache
def flat_fields() -> dict[str, tuple[str, ...]]:
    """Every leaf setting's name and its path in :class:`ControllerConfig`, derived from the schema.

    Leaf names are unique across the schema (checked here), so ``k_max=32`` has exactly one meaning.
    """
    out: dict[str, tuple[str, ...]] = {}

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            ann = info.annotation
            if name not in _OPAQUE and isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, (*prefix, name))
                continue
            if name in out:
                raise AssertionError(f"setting {name!r} declared twice: {out[name]} and {(*prefix, name)}")
            out[name] = (*prefix, name)

    walk(ControllerConfig, ())
    for alias, path in _ALIASES.items():
        out.setdefault(alias, path)
    return out


def _nest(raw: dict[str, Any]) -> dict[str, Any]:
    """Turn flat keys into the nested layout (nested keys pass through); unknown keys are left for pydantic."""
    fields = flat_fields()
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        path = fields.get(key)
        if key == "allocation" and isinstance(value, dict):
            path = None  # a nested allocation block, not the flat mode
        if key in ControllerConfig.model_fields or path is None:
            _merge(nested, {key: value})
            continue
        node: dict[str, Any] = {}
        leaf = node
        for p in path[:-1]:
            leaf[p] = {}
            leaf = leaf[p]
        leaf[path[-1]] = value
        _merge(nested, node)
    return nested


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        elif isinstance(v, BaseModel) and isinstance(into.get(k), dict):
            _merge(into[k], v.model_dump())
        elif isinstance(v, dict) and isinstance(into.get(k), BaseModel):
            base = into[k].model_dump()
            _merge(base, v)
            into[k] = base
        else:
            into[k] = v


def parse_config(data: dict | ControllerConfig | None = None, **overrides: Any) -> ControllerConfig:
    """Validate a config from a :class:`ControllerConfig`, a nested or flat dict, and flat overrides.

    pydantic's error becomes a :class:`ConfigError` naming each bad field and its value.
    """
    if isinstance(data, ControllerConfig) and not overrides:
        return data
    raw: dict[str, Any] = {}
    if isinstance(data, ControllerConfig):
        raw = data.model_dump()
    elif data is not None:
        raw = _nest(dict(data))
    _merge(raw, _nest(overrides))
    try:
        return ControllerConfig.model_validate(raw)
    except ValidationError as e:
        # Errors name a setting the way the caller spelled it: batch_size=0, not policy.allocation.N=0.
        given = {**(data if isinstance(data, dict) else {}), **overrides}
        fields = flat_fields()
        names = {fields[k]: k for k in given if k in fields and not isinstance(given[k], dict)}
        raise ConfigError("invalid ControllerConfig: " + validation_message(e, names)) from None
