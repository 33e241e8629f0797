"""Streaming statistics the controller decides from (docs/theory.md §7)."""

from carv_adapt.stats.base import NonFinitePolicy, SumStatistic
from carv_adapt.stats.calibration import ProfileCalibration
from carv_adapt.stats.control import ControlVariateEstimate, ControlVariateStats
from carv_adapt.stats.costs import CostEstimate, CostTracker, StageRole, StageTimer
from carv_adapt.stats.grouped import BetweenWithin, GroupedVariance
from carv_adapt.stats.profile import TimestepProfile
from carv_adapt.stats.steps import PolicySegment, SegmentEstimate, StepVariance
from carv_adapt.stats.welford import Welford
from carv_adapt.variance import split_half_within

__all__ = [
    "SumStatistic",
    "NonFinitePolicy",
    "TimestepProfile",
    "ProfileCalibration",
    "GroupedVariance",
    "BetweenWithin",
    "split_half_within",
    "StageTimer",
    "CostTracker",
    "CostEstimate",
    "StageRole",
    "Welford",
    "ControlVariateStats",
    "ControlVariateEstimate",
    "StepVariance",
    "PolicySegment",
    "SegmentEstimate",
]
