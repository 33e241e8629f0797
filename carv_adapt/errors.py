"""The library's exception hierarchy (STYLE §12): messages name the field, the value and the fix."""

from __future__ import annotations

__all__ = ["CarvError", "ConfigError", "ShapeError", "StateError", "NonFiniteError"]


class CarvError(Exception):
    """Base class of every error raised by carv_adapt."""


class ConfigError(CarvError, ValueError):
    """A configuration value, policy field or argument is invalid."""


class ShapeError(CarvError, ValueError):
    """A tensor passed to the library has the wrong shape."""


class StateError(CarvError, RuntimeError):
    """Methods were called out of order, or a state dict does not fit."""


class NonFiniteError(CarvError, FloatingPointError):
    """A non-finite observation arrived under the ``"error"`` non-finite policy."""
