"""TimestepProfile: empty bins and exact standard errors, with and without forgetting."""

import contextlib
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


def test_deferred_steps_equal_immediate_ones_and_resume_exactly():
    """Deferred steps are binned later with the forgetting they missed: the same means, standard errors and counts
    as immediate updates (up to rounding); a non-finite one is counted when seen; a checkpoint keeps them deferred."""
    target = TargetMeasure(100)
    edges = target.bin_edges(8)
    g = torch.Generator().manual_seed(0)
    now, later, resumed = TimestepProfile(edges), TimestepProfile(edges), TimestepProfile(edges)
    for s in range(70):
        t = torch.randint(0, 100, (3, 4), generator=g)
        v = (1.0 + t.double() / 10.0) * torch.rand(3, 4, generator=g, dtype=torch.float64)
        if s == 9:
            v[0, 1] = float("inf")
        with pytest.warns(RuntimeWarning) if s == 9 else contextlib.nullcontext():
            now.update(t, v)
            later.update(t, v, defer=True)
        assert float(later.num_nonfinite) == float(now.num_nonfinite)
        if s > 40:
            resumed.update(t, v, defer=True)
            resumed.decay(0.9)
        now.decay(0.9)
        later.decay(0.9)
        if s == 40:
            resumed.load_state_dict(later.state_dict())
            assert len(resumed._pending) == len(later._pending) > 0
    assert float(now.num_nonfinite) == 1.0
    assert torch.allclose(later.compute(), now.compute(), rtol=1e-12)
    assert torch.allclose(later.standard_error(), now.standard_error(), rtol=1e-9)
    assert torch.allclose(later.folded().count_sq, now.count_sq, rtol=1e-12)
    assert torch.equal(resumed.flat(), later.flat())
