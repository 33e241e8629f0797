"""Integrations with training frameworks and loggers; each imports its framework lazily."""

from carv_adapt.integrations.logging import RefitLogger

__all__ = ["RefitLogger"]
