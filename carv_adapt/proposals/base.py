"""Timestep measures over discrete timesteps: the target ``pi`` and the proposal extension point (theory.md §5-§6)."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError

__all__ = ["TargetMeasure", "Proposal", "Stratification", "draw_uniforms"]

Stratification = Literal["iid", "stratified", "lattice", "global"]


class TargetMeasure:
    """The target timestep distribution ``pi`` on ``{0, ..., T-1}``.

    Uniform over ``[t_min, t_max]`` (inclusive) unless ``weights`` (a ``T``-dim non-negative Tensor) is
    given, in which case ``pi ∝ weights`` restricted to ``[t_min, t_max]``.
    """

    def __init__(
        self, num_timesteps: int = 1000, t_min: int = 0, t_max: int | None = None, weights: Tensor | None = None
    ) -> None:
        t_max = num_timesteps - 1 if t_max is None else t_max
        if num_timesteps < 1:
            raise ConfigError(f"num_timesteps must be >= 1, got {num_timesteps!r}")
        if not (0 <= t_min <= t_max < num_timesteps):
            raise ConfigError(
                f"need 0 <= t_min <= t_max < num_timesteps, got t_min={t_min!r}, t_max={t_max!r}, "
                f"num_timesteps={num_timesteps!r}"
            )
        mass = torch.zeros(num_timesteps, dtype=torch.float64)
        mass[t_min : t_max + 1] = 1.0
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != (num_timesteps,) or bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
                raise ConfigError(f"target weights must be a finite non-negative {num_timesteps}-vector")
            mass = mass * w
        if mass.sum() <= 0:
            raise ConfigError("target measure has no mass on [t_min, t_max]")
        self.num_timesteps, self.t_min, self.t_max = num_timesteps, t_min, t_max
        self._pmf = mass / mass.sum()

    def pmf(self) -> Tensor:
        """``T``-dim float64 pmf ``pi``."""
        return self._pmf

    def bin_edges(self, num_bins: int) -> Tensor:
        """``num_bins + 1`` integer edges splitting ``[t_min, t_max + 1)`` into near-equal bins."""
        width = self.t_max + 1 - self.t_min
        if not (1 <= num_bins <= width):
            raise ConfigError(f"num_bins must be in [1, {width}] (timesteps in range), got {num_bins!r}")
        edges = torch.linspace(self.t_min, self.t_max + 1, num_bins + 1, dtype=torch.float64).round().long()
        return edges

    def bin_mass(self, edges: Tensor) -> Tensor:
        """``B``-dim target mass per bin for the given edges."""
        return bin_sums(self._pmf, edges)


def bin_sums(values: Tensor, edges: Tensor) -> Tensor:
    """Sum a ``T``-dim Tensor over the bins ``[edges[b], edges[b+1])``."""
    c = torch.cat([values.new_zeros(1), values.cumsum(0)])
    return c[edges[1:]] - c[edges[:-1]]


def bin_index(t: Tensor, edges: Tensor) -> Tensor:
    """Bin of each timestep (same shape as ``t``); timesteps outside the edges are clamped."""
    idx = torch.bucketize(t.reshape(-1), edges.to(t.device), right=True) - 1
    return idx.clamp_(0, edges.numel() - 2).reshape(t.shape)


@functools.lru_cache(maxsize=64)
def _offsets(K: int) -> Tensor:
    return torch.arange(K, dtype=torch.float64)


def draw_uniforms(N: int, K: int, stratification: Stratification, generator: torch.Generator) -> Tensor:
    """``N x K`` float64 uniforms on ``[0, 1)`` for inverse-CDF sampling (docs/theory.md §6).

    - ``iid``: independent uniforms.
    - ``stratified``: one stratum per inner draw of each outer draw, ``u_k = (k + U_k) / K``.
    - ``lattice``: a randomly shifted lattice, one shared shift ``U`` per outer draw.
    - ``global``: ``N K`` strata over the whole batch, randomly assigned to the ``(n, k)`` cells
      (with ``K = 1`` per-draw strata degenerate to i.i.d., so this is the default there).
    """
    if N < 1 or K < 1:
        raise ConfigError(f"N and K must be >= 1, got N={N!r}, K={K!r}")
    g = generator
    if stratification == "iid":
        return torch.rand(N, K, generator=g, dtype=torch.float64)
    if stratification == "stratified":  # (k + U_k) / K, in place: one step's plan is a handful of tiny calls
        return torch.rand(N, K, generator=g, dtype=torch.float64).add_(_offsets(K)).div_(K)
    if stratification == "lattice":
        k = torch.arange(K, dtype=torch.float64)
        return (k + torch.rand(N, 1, generator=g, dtype=torch.float64)) / K
    if stratification == "global":
        cells = N * K
        u = (torch.arange(cells, dtype=torch.float64) + torch.rand(cells, generator=g, dtype=torch.float64)) / cells
        return u[torch.randperm(cells, generator=g)].reshape(N, K)
    raise ConfigError(f"stratification must be one of 'iid', 'stratified', 'lattice', 'global', got {stratification!r}")


class Proposal(ABC):
    """A timestep proposal ``p`` with respect to a target ``pi``: the IS extension point.

    Subclasses implement :meth:`pmf` only; CDF, quantile, weights ``rho = pi / p`` and (stratified)
    sampling are shared so every proposal draws through the same code path.
    """

    def __init__(self, target: TargetMeasure) -> None:
        self.target = target
        self._cache: tuple[Tensor, Tensor, Tensor] | None = None
        self._bin_table: tuple[Tensor, Tensor] | None = None  # (edges, bin of every timestep)

    @abstractmethod
    def pmf(self) -> Tensor:
        """``T``-dim float64 pmf; must be positive wherever ``pi`` is."""

    def _tables(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._cache is None:
            p = self.pmf()
            pi = self.target.pmf()
            if p.shape != pi.shape:
                raise ConfigError(f"proposal pmf has shape {tuple(p.shape)}, target {tuple(pi.shape)}")
            if bool((p[pi > 0] <= 0).any()):
                raise ConfigError("proposal must put positive mass wherever the target does (else IS is biased)")
            cdf = p.cumsum(0)
            cdf = cdf / cdf[-1]
            rho = torch.where(p > 0, pi / p.clamp_min(1e-300), torch.zeros_like(p))
            self._cache = (p, cdf, rho)
        return self._cache

    def cdf(self) -> Tensor:
        """``T``-dim CDF ``F_p(t) = P(T <= t)``."""
        return self._tables()[1]

    def quantile(self, u: Tensor) -> Tensor:
        """Discrete quantile ``F_p^{-1}(u) = min{t : F_p(t) > u}`` for ``u`` in ``[0, 1)`` (long, same shape)."""
        cdf = self._tables()[1]
        return torch.searchsorted(cdf, u.double().contiguous(), right=True).clamp_(max=cdf.numel() - 1)

    def bins(self, t: Tensor, edges: Tensor) -> Tensor:
        """:func:`bin_index` of timesteps ``t`` drawn from this proposal, from a table built once per ``edges``."""
        if self._bin_table is None or self._bin_table[0] is not edges:
            self._bin_table = (edges, bin_index(torch.arange(self.target.num_timesteps), edges))
        return self._bin_table[1][t]

    def weights(self, t: Tensor) -> Tensor:
        """Importance weights ``rho(t) = pi(t) / p(t)`` (float64, same shape as ``t``)."""
        return self._tables()[2][t]

    def sample(
        self, N: int, K: int, generator: torch.Generator, stratification: Stratification = "iid"
    ) -> tuple[Tensor, Tensor]:
        """Draw ``N x K`` timesteps (long) and their weights ``rho`` (float64) by inverse CDF (docs/theory.md §6)."""
        t = self.quantile(draw_uniforms(N, K, stratification, generator))
        return t, self.weights(t)


class PmfProposal(Proposal):
    """A proposal given directly by a ``T``-dim pmf (normalized here)."""

    def __init__(self, target: TargetMeasure, pmf: Tensor) -> None:
        super().__init__(target)
        p = torch.as_tensor(pmf, dtype=torch.float64).clone()
        if p.shape != (target.num_timesteps,) or bool((p < 0).any()) or not bool(torch.isfinite(p).all()):
            raise ConfigError(f"pmf must be a finite non-negative {target.num_timesteps}-vector")
        if p.sum() <= 0:
            raise ConfigError("pmf has no mass")
        self._pmf = p / p.sum()

    def pmf(self) -> Tensor:
        return self._pmf


__all__ += ["PmfProposal", "bin_sums", "bin_index"]
