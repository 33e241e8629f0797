"""A synthetic nested workload with known statistics, for tests, calibration and benchmarks.

``f(xi, t, eps) = xi + s(t) * eps`` in ``R^D`` with ``xi ~ N(mu0, sb^2 I)`` and ``eps ~ N(0, I)``, so
(docs/theory.md §2, §5): ``sigma_B^2 = D sb^2``, ``M2 = E ||xi||^2 = ||mu0||^2 + D sb^2``,
``m(t) = M2 + D s(t)^2`` and ``sigma_W^2(p) = sum_t pi(t)^2 / p(t) m(t) - M2``. Costs are simulated:
``c_out`` per outer draw, ``c_in`` per inner draw and ``c_call`` per teacher call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from carv_adapt.allocation import optimal_k
from carv_adapt.plan import Plan
from carv_adapt.proposals.base import TargetMeasure, bin_sums
from carv_adapt.variance import is_second_moment, optimal_proposal_bins, work_normalized_variance

__all__ = ["SyntheticNested", "Oracle"]


@dataclass(frozen=True)
class Oracle:
    """The best fixed policy with known statistics: bin proposal ``p``, ``K``, and its ``W``."""

    p: Tensor
    K: int
    W: float
    W_baseline: float
    sigma_b2: float
    sigma_w2: float

    @property
    def ecm(self) -> float:
        return self.W_baseline / self.W


class SyntheticNested:
    """Known-statistics workload (see module doc). ``s_bins`` gives ``s(t)`` per bin of ``edges``."""

    def __init__(
        self,
        target: TargetMeasure,
        edges: Tensor,
        s_bins: Tensor,
        D: int = 16,
        sb: float = 1.0,
        mu0: float = 0.5,
        c_out: float = 0.010,
        c_in: float = 0.001,
        c_call: float = 0.002,
    ) -> None:
        self.target, self.edges = target, edges
        self.s_bins = torch.as_tensor(s_bins, dtype=torch.float64)
        self.D, self.sb, self.mu0 = D, sb, mu0
        self.c_out, self.c_in, self.c_call = c_out, c_in, c_call
        self.pi_b = target.bin_mass(edges)

    @property
    def sigma_b2(self) -> float:
        return self.D * self.sb**2

    @property
    def M2(self) -> float:
        return self.D * self.mu0**2 + self.D * self.sb**2

    @property
    def G(self) -> Tensor:
        """The exact expectation ``E f = mu0`` (``D``-dim)."""
        return torch.full((self.D,), self.mu0, dtype=torch.float64)

    def m_bins(self) -> Tensor:
        return self.M2 + self.D * self.s_bins**2

    def sigma_w2(self, p_bins: Tensor) -> float:
        """Exact within variance for i.i.d. inner draws from a bin proposal (``∝ pi`` inside bins)."""
        return float(is_second_moment(self.pi_b, p_bins, self.m_bins())) - self.M2

    def sigma_w2_pmf(self, p: Tensor) -> float:
        """Exact within variance for i.i.d. inner draws from any ``T``-dim proposal pmf ``p``."""
        from carv_adapt.proposals.base import bin_index

        pi = self.target.pmf()
        m_t = self.m_bins()[bin_index(torch.arange(pi.numel()), self.edges)]
        support = pi > 0
        return float((pi[support] ** 2 / p.double()[support] * m_t[support]).sum()) - self.M2

    def s_of_t(self, t: Tensor) -> Tensor:
        from carv_adapt.proposals.base import bin_index

        return self.s_bins[bin_index(t, self.edges)]

    def contributions(self, plan: Plan, generator: torch.Generator) -> Tensor:
        """``N x K x D`` rho-free contributions for ``plan`` (outer draws from ``generator``)."""
        xi = self.mu0 + self.sb * torch.randn(plan.N, 1, self.D, generator=generator, dtype=torch.float64)
        eps = plan.noise((self.D,), dtype=torch.float64)
        return xi + self.s_of_t(plan.t)[..., None] * eps

    def costs(self, plan: Plan) -> dict[str, float]:
        """Simulated stage seconds of one step under ``plan``."""
        return {"upstream": self.c_out * plan.N, "teacher": self.c_call + self.c_in * plan.N * plan.K}

    def oracle(self, k_min: int = 1, k_max: int = 64, alpha: float = 0.0) -> Oracle:
        """Best fixed policy: ``p = (1 - alpha) p* + alpha pi`` and the integer ``K`` minimizing ``W``."""
        p = (1 - alpha) * optimal_proposal_bins(self.pi_b, self.m_bins()) + alpha * self.pi_b
        sw = self.sigma_w2(p)
        K = optimal_k(self.sigma_b2, sw, self.c_out, self.c_in, k_min, k_max)
        W = work_normalized_variance(self.sigma_b2, sw, K, self.c_out, self.c_in)
        W0 = work_normalized_variance(self.sigma_b2, self.sigma_w2(self.pi_b), 1, self.c_out, self.c_in)
        return Oracle(p=p, K=K, W=W, W_baseline=W0, sigma_b2=self.sigma_b2, sigma_w2=sw)


def bin_pmf(proposal_pmf: Tensor, edges: Tensor) -> Tensor:
    """Bin masses of a ``T``-dim pmf."""
    return bin_sums(proposal_pmf, edges)
