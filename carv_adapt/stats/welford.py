"""Measured variance from independent replications (docs/theory.md §7): a streaming Welford accumulator."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Welford"]


class Welford:
    """Streaming mean and trace of the covariance of vector replications (numerically stable).

    ``variance()`` is ``tr Cov`` (unbiased, ``n - 1``); ``mse(reference)`` is ``E ||x - G||^2`` against a known
    ``G``. ``standard_error_of_variance()`` uses the per-replication squared deviations, so tolerances in
    tests and confidence statements come from the data, not a guess.
    """

    def __init__(self) -> None:
        self.n = 0
        self._mean: Tensor | None = None
        self._m2 = 0.0
        self._m2_dims: Tensor | None = None
        self._sq: list[float] = []

    def update(self, x: Tensor) -> None:
        v = x.detach().reshape(-1).double().cpu()
        self.n += 1
        if self._mean is None:
            self._mean = v.clone()
            self._m2_dims = torch.zeros_like(v)
            self._sq.append(0.0)
            return
        delta = v - self._mean
        self._mean += delta / self.n
        d2 = delta * (v - self._mean)
        self._m2_dims += d2
        self._m2 += float(d2.sum())
        self._sq.append(float((delta**2).sum()))

    @property
    def mean(self) -> Tensor:
        if self._mean is None:
            raise ValueError("Welford: no replications yet")
        return self._mean

    def variance(self) -> float:
        """``tr Cov`` of one replication."""
        return self._m2 / (self.n - 1) if self.n >= 2 else math.nan

    def per_dim_variance(self) -> Tensor:
        """Per-coordinate variance of one replication (``D``-dim)."""
        if self._m2_dims is None or self.n < 2:
            raise ValueError("Welford: need at least 2 replications")
        return self._m2_dims / (self.n - 1)

    def relative_se(self) -> float:
        """Approximate relative standard error of :meth:`variance` (from the spread of squared deviations)."""
        if self.n < 3:
            return math.nan
        sq = torch.tensor(self._sq[1:], dtype=torch.float64)
        return float(sq.std() / sq.mean()) / math.sqrt(self.n - 1)
