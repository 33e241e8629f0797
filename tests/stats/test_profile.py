"""TimestepProfile: empty bins and exact standard errors, with and without forgetting."""

import math

import pytest
import torch

from carv_adapt.proposals import TargetMeasure
from carv_adapt.stats import TimestepProfile


def test_profile_empty_bin_takes_the_global_mean_and_standard_errors_are_exact():
    edges = TargetMeasure(10).bin_edges(2)
    prof = TimestepProfile(edges)
    prof.update(torch.tensor([1, 2, 3]), torch.tensor([2.0, 4.0, 6.0]))
    assert prof.compute().tolist() == [4.0, 4.0]  # bin 1 is empty: the global mean, never 0
    se = prof.standard_error()
    assert se[0].item() == pytest.approx(2.0 / 3**0.5) and math.isinf(se[1].item())  # s / sqrt(n), s = 2
    # Under forgetting the effective sample size is (sum w)^2 / sum w^2, not the decayed count.
    prof2 = TimestepProfile(edges)
    x = torch.tensor([1.0, 5.0, 2.0, 8.0])
    for v in x:
        prof2.decay(0.5)
        prof2.update(torch.tensor([1]), v.reshape(1))
    w = torch.tensor([0.125, 0.25, 0.5, 1.0], dtype=torch.float64)
    mean = (w * x).sum() / w.sum()
    V = (w * (x - mean) ** 2).sum() / (w.sum() - (w**2).sum() / w.sum())
    assert prof2.standard_error()[0].item() == pytest.approx(float((V * (w**2).sum()).sqrt() / w.sum()))
