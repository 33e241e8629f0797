"""improved-diffusion's loss-second-moment timestep resampler, re-implemented as a peer baseline.

The rule (Nichol & Dhariwal 2021, ``LossSecondMomentResampler``): keep the last ``history_per_term`` losses
of every timestep; until every timestep has a full history sample uniformly; afterwards sample
``p(t) ∝ sqrt(mean of the stored squared losses at t)``, mixed with the uniform distribution by
``uniform_prob``, one draw per sample (``K = 1``) weighted by ``1 / (T p(t))``. Here the timesteps are those
of the target measure's support and the weight is the library's ``rho = pi / p``. For a non-uniform target
``pi`` the rule generalises to ``p ∝ pi sqrt(E[loss^2 | t])`` mixed with ``pi`` itself; for the uniform
target (every shipped workload) that is exactly improved-diffusion's rule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError
from carv_adapt.proposals import PmfProposal, TargetMeasure, UniformProposal
from carv_adapt.proposals.base import Proposal

__all__ = ["LossSecondMomentResampler"]


class LossSecondMomentResampler:
    """Per-timestep loss history and the proposal it implies.

    Args:
        target: the target measure; only timesteps in its support are tracked.
        history_per_term: losses kept per timestep (improved-diffusion: 10).
        uniform_prob: mass given to the uniform distribution once warmed up (improved-diffusion: 0.001).
    """

    def __init__(self, target: TargetMeasure, history_per_term: int = 10, uniform_prob: float = 0.001) -> None:
        if history_per_term < 1:
            raise ConfigError(f"history_per_term must be >= 1, got {history_per_term!r}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ConfigError(f"uniform_prob must be in [0, 1], got {uniform_prob!r}")
        self.target = target
        self.history_per_term, self.uniform_prob = history_per_term, uniform_prob
        self.support = torch.nonzero(target.pmf() > 0).flatten()
        self._pi = target.pmf()[self.support] / target.pmf()[self.support].sum()
        self._slot = torch.full((target.num_timesteps,), -1, dtype=torch.long)
        self._slot[self.support] = torch.arange(self.support.numel())
        self.history = torch.zeros(self.support.numel(), history_per_term, dtype=torch.float64)
        self.counts = torch.zeros(self.support.numel(), dtype=torch.long)

    @property
    def warmed_up(self) -> bool:
        """Whether every timestep has a full history (before that the proposal is uniform)."""
        return bool((self.counts == self.history_per_term).all())

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record one loss per timestep draw, in order (a full history drops its oldest entry)."""
        t, losses = t.reshape(-1), losses.reshape(-1).double()
        if t.numel() != losses.numel():
            raise ConfigError(f"got {t.numel()} timesteps but {losses.numel()} losses")
        slots = self._slot[t]
        if bool((slots < 0).any()):
            bad = t[slots < 0][:5].tolist()
            raise ConfigError(f"timesteps {bad} are outside the target's support")
        for s, loss in zip(slots.tolist(), losses.tolist()):
            c = int(self.counts[s])
            if c == self.history_per_term:
                self.history[s, :-1] = self.history[s, 1:].clone()
                self.history[s, -1] = loss
            else:
                self.history[s, c] = loss
                self.counts[s] = c + 1

    def weights(self) -> Tensor:
        """The sampling distribution over the support (the target until warmed up)."""
        if not self.warmed_up:
            return self._pi.clone()
        w = self._pi * (self.history**2).mean(dim=-1).sqrt()
        if not w.sum() > 0:
            return self._pi.clone()
        return w / w.sum() * (1.0 - self.uniform_prob) + self.uniform_prob * self._pi

    def proposal(self) -> Proposal:
        """The current distribution as a library proposal over all ``num_timesteps`` (zero off-support)."""
        if not self.warmed_up:
            return UniformProposal(self.target)
        pmf = torch.zeros(self.target.num_timesteps, dtype=torch.float64)
        pmf[self.support] = self.weights()
        return PmfProposal(self.target, pmf)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["history"].shape) != tuple(self.history.shape):
            raise ConfigError(
                f"history shape {tuple(state['history'].shape)} does not match {tuple(self.history.shape)}"
            )
        self.history = state["history"].clone().double()
        self.counts = state["counts"].clone().long()
