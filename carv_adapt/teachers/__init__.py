"""Teachers. ``import carv_adapt.teachers`` needs only the core; the diffusers adapter and the shipped
tiny teacher live in their own modules and import diffusers there."""

from carv_adapt.teachers.base import Teacher
from carv_adapt.teachers.gaussian import (
    GaussianMixtureTeacher,
    GaussianTeacher,
    WithinBetween,
    exact_sds_expectation,
    exact_sds_statistics,
    exact_second_moment_profile,
    exact_within_between,
    sds_integrand,
    sds_weight,
)
from carv_adapt.teachers.schedules import ddpm_alphas_cumprod
from carv_adapt.teachers.surrogate import GaussianSurrogate

__all__ = [
    "Teacher",
    "GaussianTeacher",
    "GaussianMixtureTeacher",
    "sds_integrand",
    "sds_weight",
    "exact_sds_expectation",
    "exact_sds_statistics",
    "exact_second_moment_profile",
    "exact_within_between",
    "WithinBetween",
    "ddpm_alphas_cumprod",
    "GaussianSurrogate",
]
