"""Timestep measures and proposals (docs/theory.md §5-§6)."""

from carv_adapt.proposals.base import (
    PmfProposal,
    Proposal,
    Stratification,
    TargetMeasure,
    bin_index,
    bin_sums,
    draw_uniforms,
)
from carv_adapt.proposals.families import (
    BinnedProposal,
    MixtureProposal,
    UniformProposal,
    WeightedProposal,
    as_binned,
    defensive_mixture,
    resolve_prior,
    teacher_weight_proposal,
)

__all__ = [
    "TargetMeasure",
    "Proposal",
    "PmfProposal",
    "UniformProposal",
    "BinnedProposal",
    "WeightedProposal",
    "MixtureProposal",
    "defensive_mixture",
    "teacher_weight_proposal",
    "as_binned",
    "resolve_prior",
    "Stratification",
    "draw_uniforms",
    "bin_sums",
    "bin_index",
]
