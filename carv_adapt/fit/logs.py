"""Statistics logs: every refit record as one JSON line, readable back into :class:`Refit` values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from carv_adapt.errors import ConfigError
from carv_adapt.plan import Refit

__all__ = ["JsonlRefitLog", "read_refit_log"]


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no NaN/Inf; "nan"/"inf" round-trip through float()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x


class JsonlRefitLog:
    """A controller logger appending each refit to ``path`` (``AdaptiveController(..., logger=JsonlRefitLog(p))``).

    An existing non-empty ``path`` is refused unless ``append=True``, so a second run cannot silently mix its
    refits into an earlier run's log."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.append = append
        if self.path.is_dir():
            raise ConfigError(
                f"refit log {self.path} is a folder; pass a file path such as {self.path / 'refits.jsonl'}"
            )
        if not append and self.path.exists() and self.path.stat().st_size > 0:
            raise ConfigError(
                f"refit log {self.path} already exists and is not empty; pass append=True to add to it, "
                "or use a new path"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, refit: Refit) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(_jsonable(refit.to_dict())) + "\n")


_FLOATS = {f for f, t in Refit.__annotations__.items() if t == "float"}


def read_refit_log(path: str | Path) -> list[Refit]:
    """Read a JSONL refit log back into :class:`Refit` values; a bad line fails naming its number."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path}: cannot read the refit log ({e.strerror or e}); pass the refits.jsonl a run wrote"
        ) from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            for k in _FLOATS & set(raw):
                raw[k] = float(raw[k])
            out.append(Refit(**raw))
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
            raise ConfigError(f"{path}:{i}: not a refit record ({e})") from None
    if not out:
        raise ConfigError(f"{path}: no refit records")
    return out
