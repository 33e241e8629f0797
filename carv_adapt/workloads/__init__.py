"""Workloads: pipelines whose gradients are expectations over (t, eps). Heavy ones import lazily."""

from carv_adapt.workloads.synthetic import Oracle, SyntheticNested

__all__ = ["SyntheticNested", "Oracle"]
