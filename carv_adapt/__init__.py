"""carv_adapt: compute-aware variance reduction for Monte Carlo expectations with diffusion teachers."""

from carv_adapt.allocation import k_star_continuous, optimal_allocation, optimal_k
from carv_adapt.config import ControllerConfig
from carv_adapt.control_variate import ControlVariate, check_control_variate, with_coefficients
from carv_adapt.controller import AdaptiveController
from carv_adapt.errors import CarvError, ConfigError, NonFiniteError, ShapeError, StateError
from carv_adapt.estimator import Estimate, HierarchicalEstimator, hierarchical_estimate
from carv_adapt.plan import Plan, Refit, make_plan
from carv_adapt.proposals import (
    BinnedProposal,
    MixtureProposal,
    PmfProposal,
    Proposal,
    TargetMeasure,
    UniformProposal,
    WeightedProposal,
    defensive_mixture,
    teacher_weight_proposal,
)
from carv_adapt.variance import ecm, optimal_proposal_bins, work_normalized_variance

__version__ = "0.1.0"

__all__ = [
    "AdaptiveController",
    "ControllerConfig",
    "HierarchicalEstimator",
    "hierarchical_estimate",
    "Estimate",
    "Plan",
    "Refit",
    "make_plan",
    "TargetMeasure",
    "Proposal",
    "UniformProposal",
    "BinnedProposal",
    "WeightedProposal",
    "PmfProposal",
    "MixtureProposal",
    "defensive_mixture",
    "teacher_weight_proposal",
    "work_normalized_variance",
    "ecm",
    "optimal_k",
    "optimal_allocation",
    "k_star_continuous",
    "optimal_proposal_bins",
    "CarvError",
    "ConfigError",
    "ShapeError",
    "StateError",
    "NonFiniteError",
    "ControlVariate",
    "check_control_variate",
    "with_coefficients",
]
