"""Per-bin calibration of the output-space profile (docs/theory.md §7.9): the paired ratio and its error."""

import math

import pytest
import torch

from carv_adapt.errors import ShapeError
from carv_adapt.stats.calibration import ProfileCalibration

EDGES = torch.tensor([0, 10, 20, 30])


def test_exact_ratio_per_bin_and_nan_where_unpaired():
    cal = ProfileCalibration(EDGES)
    t = torch.tensor([1, 2, 11, 12, 13])
    x = torch.tensor([1.0, 3.0, 2.0, 4.0, 1.0])
    y = torch.tensor([2.0, 6.0, 10.0, 20.0, 5.0])  # ratio 2 in bin 0, 5 in bin 1, bin 2 unseen
    cal.update(t, x, y)
    r, se = cal.compute()
    assert r[:2].tolist() == [2.0, 5.0] and math.isnan(float(r[2]))
    assert se[:2].tolist() == [0.0, 0.0] and math.isinf(float(se[2]))  # exact proportionality: no residual


def test_ratio_is_unbiased_within_its_standard_error_under_forgetting():
    """y = r_b x (1 + noise): the estimate sits within 4 of its own standard errors of r_b in every bin, and the
    standard error matches the spread of the estimate over independent repeats (within 25 %)."""
    r_true = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    estimates, ses = [], []
    for _ in range(200):
        cal = ProfileCalibration(EDGES)
        for _ in range(40):
            t = torch.randint(0, 30, (8,), generator=g)
            x = torch.rand(8, generator=g, dtype=torch.float64) * 2 + 0.5
            y = r_true[t // 10] * x * (1 + 0.3 * torch.randn(8, generator=g, dtype=torch.float64))
            cal.update(t, x, y)
            cal.decay(0.97)
        r, se = cal.compute()
        estimates.append(r)
        ses.append(se)
    e, s = torch.stack(estimates), torch.stack(ses)
    assert float(((e[0] - r_true) / s[0]).abs().max()) < 4.0
    z = (e.mean(0) - r_true) / (e.std(0) / len(e) ** 0.5)
    assert float(z.abs().max()) < 4.0  # the ratio estimator's bias is below the repeats' resolution
    spread = e.std(0) / s.mean(0)
    assert float((spread - 1).abs().max()) < 0.25


def test_non_finite_pairs_are_counted_and_dropped():
    cal = ProfileCalibration(EDGES)
    with pytest.warns(RuntimeWarning):
        cal.update(torch.tensor([1, 2, 3]), torch.tensor([1.0, float("nan"), 1.0]), torch.tensor([2.0, 2.0, math.inf]))
    assert float(cal.num_nonfinite) == 2 and float(cal.count.sum()) == 1
    with pytest.raises(ShapeError):
        cal.update(torch.tensor([1, 2]), torch.tensor([1.0]), torch.tensor([1.0]))


def test_state_round_trips_exactly():
    cal = ProfileCalibration(EDGES)
    cal.update(torch.tensor([1, 15, 25]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 7.0, 1.0]))
    cal.decay(0.9)
    other = ProfileCalibration(EDGES)
    other.load_state_dict(cal.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(cal.compute(), other.compute()))
