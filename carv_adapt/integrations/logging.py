"""Logging of refits: TensorBoard scalars and histograms, or any callable sink."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from carv_adapt.plan import Refit

__all__ = ["RefitLogger", "Sink"]

Sink = Callable[[str, float, int], None]

SCALARS = ("K", "N", "sigma_b2", "sigma_w2", "c_0", "c_out", "c_in", "predicted_W", "predicted_ecm", "is_gain")
# Progress quantities (docs/theory.md §13) and the probe's measurement time, from the record's extras.
EXTRAS = ("G2", "noise_scale", "v_over_g2", "progress_gain", "probe_seconds_per_step")


class RefitLogger:
    """Writes each :class:`Refit` as scalars (``carv/K``, ``carv/predicted_ecm``, ...) and the proposal and
    profile as histograms over timestep bins.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with ``add_scalar``), or a callable
            ``sink(name, value, step)`` that receives scalars only.
        prefix: tag prefix.

    Pass it to the controller as ``AdaptiveController(..., logger=RefitLogger(writer))``; it is called at every
    refit, never on the hot path.
    """

    def __init__(self, writer: Any, prefix: str = "carv") -> None:
        self.writer, self.prefix = writer, prefix

    def __call__(self, refit: Refit) -> None:
        for name in SCALARS:
            value = float(getattr(refit, name))
            if math.isfinite(value):
                self._scalar(f"{self.prefix}/{name}", value, refit.step)
        for name in EXTRAS:
            value = float(refit.extra.get(name, math.nan))
            if math.isfinite(value):
                self._scalar(f"{self.prefix}/{name}", value, refit.step)
        self._scalar(f"{self.prefix}/num_nonfinite", float(refit.extra.get("num_nonfinite", 0)), refit.step)
        if hasattr(self.writer, "add_histogram_raw"):
            for tag, weights in (("proposal", refit.proposal), ("profile", refit.profile)):
                self._histogram(f"{self.prefix}/{tag}", refit.bin_edges, weights, refit.step)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if hasattr(self.writer, "add_scalar"):
            self.writer.add_scalar(tag, value, step)
        else:
            self.writer(tag, value, step)

    def _histogram(self, tag: str, edges: list[int], weights: list[float], step: int) -> None:
        w = torch.tensor(weights, dtype=torch.float64)
        e = torch.tensor(edges, dtype=torch.float64)
        centers = (e[1:] + e[:-1]) / 2
        self.writer.add_histogram_raw(
            tag,
            min=float(e[0]),
            max=float(e[-1]),
            num=float(w.sum()),
            sum=float((w * centers).sum()),
            sum_squares=float((w * centers**2).sum()),
            bucket_limits=e[1:].tolist(),
            bucket_counts=w.tolist(),
            global_step=step,
        )
