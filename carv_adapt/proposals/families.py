"""Proposal families (docs/theory.md §5): uniform (= the target), piecewise-constant over bins, analytic
``q ∝ pi g`` (the teacher-weight prior), and the defensive mixture."""

from __future__ import annotations

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError
from carv_adapt.proposals.base import PmfProposal, Proposal, TargetMeasure, bin_index, bin_sums

__all__ = [
    "UniformProposal",
    "BinnedProposal",
    "WeightedProposal",
    "MixtureProposal",
    "defensive_mixture",
    "teacher_weight_proposal",
]


class UniformProposal(Proposal):
    """``p = pi``: plain Monte Carlo, all weights 1 on the target's support."""

    def pmf(self) -> Tensor:
        return self.target.pmf()


class BinnedProposal(Proposal):
    """Piecewise constant relative to the target: bin ``b`` gets mass ``probs[b]``, spread ``∝ pi`` inside.

    Args:
        target: the target measure.
        edges: ``B + 1`` increasing integer bin edges (``[edges[b], edges[b+1])``).
        probs: ``B``-dim bin masses (normalized here); positive wherever the target has mass.
    """

    def __init__(self, target: TargetMeasure, edges: Tensor, probs: Tensor) -> None:
        super().__init__(target)
        edges = torch.as_tensor(edges, dtype=torch.long)
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if edges.dim() != 1 or edges.numel() != probs.numel() + 1 or bool((edges[1:] <= edges[:-1]).any()):
            raise ConfigError(
                f"edges must be B+1 strictly increasing integers for B={probs.numel()} bins, got {edges.tolist()}"
            )
        if bool((probs < 0).any()) or not bool(torch.isfinite(probs).all()) or probs.sum() <= 0:
            raise ConfigError(f"bin probabilities must be finite, >= 0 and not all 0, got {probs.tolist()}")
        self.edges = edges
        self.probs = probs / probs.sum()

    def pmf(self) -> Tensor:
        pi = self.target.pmf()
        pi_b = bin_sums(pi, self.edges)
        t = torch.arange(pi.numel())
        b = bin_index(t, self.edges)
        inside = (t >= self.edges[0]) & (t < self.edges[-1])
        scale = torch.where(pi_b > 0, self.probs / pi_b.clamp_min(1e-300), torch.zeros_like(pi_b))
        return torch.where(inside, pi * scale[b], torch.zeros_like(pi))


class WeightedProposal(Proposal):
    """``q(t) ∝ pi(t) g(t)`` for a user-given analytic ``g >= 0`` (a ``T``-dim Tensor)."""

    def __init__(self, target: TargetMeasure, g: Tensor) -> None:
        super().__init__(target)
        g = torch.as_tensor(g, dtype=torch.float64)
        if g.shape != (target.num_timesteps,) or bool((g < 0).any()) or not bool(torch.isfinite(g).all()):
            raise ConfigError(f"g must be a finite non-negative {target.num_timesteps}-vector")
        q = target.pmf() * g
        if q.sum() <= 0:
            raise ConfigError("pi * g has no mass on the target's support")
        self.g = g
        self._pmf = q / q.sum()

    def pmf(self) -> Tensor:
        return self._pmf


class MixtureProposal(Proposal):
    """``p = sum_j w_j p_j`` over proposals sharing one target."""

    def __init__(self, components: list[Proposal], mix: Tensor | list[float]) -> None:
        if not components:
            raise ConfigError("a mixture needs at least one component")
        super().__init__(components[0].target)
        w = torch.as_tensor(mix, dtype=torch.float64)
        if w.shape != (len(components),) or bool((w < 0).any()) or w.sum() <= 0:
            raise ConfigError(f"mixture weights must be {len(components)} non-negative numbers, got {w.tolist()}")
        self.components, self.mix = components, w / w.sum()

    def pmf(self) -> Tensor:
        return sum(w * c.pmf() for w, c in zip(self.mix.tolist(), self.components))  # type: ignore[return-value]


def defensive_mixture(proposal: Proposal, alpha: float) -> Proposal:
    """``(1 - alpha) p + alpha pi``: bounds ``rho <= 1 / alpha`` (docs/theory.md §5)."""
    if not (0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha must be in [0, 1], got {alpha!r}")
    return MixtureProposal([proposal, UniformProposal(proposal.target)], [1.0 - alpha, alpha])


def teacher_weight_proposal(target: TargetMeasure, weight: Tensor, alphas_cumprod: Tensor) -> WeightedProposal:
    """The paper's teacher-weight prior ``q(t) ∝ pi(t) w(t) sqrt(alphabar_t)`` (theory.md §5); no statistics needed."""
    w = torch.as_tensor(weight, dtype=torch.float64)
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if a.shape != (target.num_timesteps,):
        raise ConfigError(f"alphas_cumprod must have {target.num_timesteps} entries, got {tuple(a.shape)}")
    return WeightedProposal(target, w.abs() * a.clamp_min(0).sqrt())


def as_binned(proposal: Proposal, edges: Tensor) -> BinnedProposal:
    """Project any proposal onto bins (keeps bin masses; ``∝ pi`` inside bins)."""
    return BinnedProposal(proposal.target, edges, bin_sums(proposal.pmf(), edges))


__all__ += ["as_binned", "PmfProposal"]


def resolve_prior(prior: Proposal | Tensor, target: TargetMeasure, alpha: float) -> Tensor:
    """A prior proposal (a :class:`Proposal`, or a ``T``-dim Tensor ``g`` meaning ``q ∝ pi g``) as a ``T``-dim
    pmf mixed with the target: ``(1 - alpha) q + alpha pi``.

    The defensive mixture applies to the prior too: an analytic ``g(t)`` that vanishes somewhere (the
    teacher-weight prior at ``t -> T``, where ``alphabar -> 0``) would otherwise give unbounded weights.
    """
    if isinstance(prior, Proposal):
        pmf = PmfProposal(target, prior.pmf()).pmf()
    else:
        pmf = PmfProposal(target, target.pmf() * torch.as_tensor(prior, dtype=torch.float64)).pmf()
    return (1.0 - alpha) * pmf + alpha * target.pmf()


__all__ += ["resolve_prior"]
