"""Offline policy fitting from logged statistics: closed form, then BoTorch for the rest (docs/theory.md §9)."""

from carv_adapt.fit.logs import JsonlRefitLog, read_refit_log

__all__ = ["JsonlRefitLog", "read_refit_log"]
