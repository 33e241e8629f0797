"""Streaming statistics (SPEC §7): unbiased between/within, merge = joint update, exact state round trip."""

import math
import warnings

import pytest
import torch

from carv_adapt.errors import ConfigError, NonFiniteError
from carv_adapt.proposals import TargetMeasure
from carv_adapt.stats import CostTracker, GroupedVariance, StageTimer, TimestepProfile, split_half_within


def _nested(g, N, K, D, sb, sw):
    """x_nk = a_n + b_nk with tr Cov(a) = D sb^2 (between) and tr Cov(b) = D sw^2 (within)."""
    return (
        1.5
        + sb * torch.randn(N, 1, D, generator=g, dtype=torch.float64)
        + sw * torch.randn(N, K, D, generator=g, dtype=torch.float64)
    )


@pytest.mark.parametrize("N, K", [(2, 2), (5, 3), (3, 7)])
def test_between_within_unbiased_on_nested_model(N, K):
    g = torch.Generator().manual_seed(10 + N + K)
    D, sb, sw = 6, 0.8, 1.7
    R = 3000
    est_b, est_w = torch.empty(R, dtype=torch.float64), torch.empty(R, dtype=torch.float64)
    for r in range(R):
        gv = GroupedVariance()
        gv.update(_nested(g, N, K, D, sb, sw))
        out = gv.compute()
        est_b[r], est_w[r] = out.sigma_b2, out.sigma_w2
    for est, exact in ((est_b, D * sb**2), (est_w, D * sw**2)):
        z = (est.mean() - exact) / (est.std() / math.sqrt(R))
        assert abs(float(z)) < 4.0, (float(est.mean()), exact)


def test_split_half_probe_unbiased():
    g = torch.Generator().manual_seed(3)
    N, K, P, sw = 4, 5, 10, 0.9
    vals = []
    for _ in range(3000):
        x = sw * torch.randn(N, K, P, generator=g, dtype=torch.float64)
        vals.append(split_half_within(x[:, 0::2].mean(1), x[:, 1::2].mean(1), K))
    v = torch.tensor(vals)
    z = (v.mean() - P * sw**2) / (v.std() / math.sqrt(len(vals)))
    assert abs(float(z)) < 4.0


def test_probe_tracker_matches_known_between_within():
    g = torch.Generator().manual_seed(4)
    N, K, P, sb, sw = 6, 4, 5, 1.1, 0.7
    gv = GroupedVariance()
    for _ in range(3000):
        x = _nested(g, N, K, P, sb, sw)
        gv.update_split_half(x[:, 0::2].mean(1), x[:, 1::2].mean(1), K)
    out = gv.compute()
    # 3000 steps x 6 groups: relative SE of a variance estimate ~ sqrt(2 / (P * dof)) < 1.5 %.
    assert out.sigma_w2 == pytest.approx(P * sw**2, rel=0.06)
    assert out.sigma_b2 == pytest.approx(P * sb**2, rel=0.06)


def _trackers():
    edges = TargetMeasure(100).bin_edges(10)
    return [TimestepProfile(edges), GroupedVariance(), CostTracker()]


def _feed(tracker, g, steps):
    for s in range(steps):
        N, K = 3, 2 + s % 3
        if isinstance(tracker, TimestepProfile):
            tracker.update(torch.randint(0, 100, (N, K), generator=g), torch.rand(N, K, generator=g))
        elif isinstance(tracker, GroupedVariance):
            tracker.update(torch.randn(N, K, 4, generator=g))
        else:
            tracker.update(N, K, {"upstream": 0.01 * N, "teacher": 0.002 + 0.001 * N * K})


@pytest.mark.parametrize("idx", [0, 1, 2])
def test_merge_equals_joint_update_and_state_round_trips(idx):
    a, b, joint = _trackers()[idx], _trackers()[idx], _trackers()[idx]
    _feed(a, torch.Generator().manual_seed(1), 5)
    _feed(b, torch.Generator().manual_seed(2), 7)
    _feed(joint, torch.Generator().manual_seed(1), 5)
    _feed(joint, torch.Generator().manual_seed(2), 7)
    a.merge(b)
    for name in joint.state_names:
        assert torch.allclose(getattr(a, name), getattr(joint, name), rtol=1e-12, atol=1e-12), name
    c = _trackers()[idx]
    c.load_state_dict(a.state_dict())
    assert all(torch.equal(getattr(a, n), getattr(c, n)) for n in a.state_names)
    d = _trackers()[idx]
    d.load_flat(a.flat())
    assert torch.equal(d.flat(), a.flat())


def test_nonfinite_observations_are_dropped_and_counted():
    edges = TargetMeasure(100).bin_edges(5)
    clean, dirty = TimestepProfile(edges), TimestepProfile(edges)
    t = torch.tensor([[3, 40], [70, 99]])
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    clean.update(t, v)
    dirty.update(t, v)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        dirty.update(torch.tensor([[5, 50]]), torch.tensor([[float("nan"), float("inf")]]))
        dirty.update(torch.tensor([[5]]), torch.tensor([[float("nan")]]))
    assert len([x for x in w if issubclass(x.category, RuntimeWarning)]) == 1
    assert int(dirty.num_nonfinite) == 3
    assert torch.equal(clean.count, dirty.count) and torch.equal(clean.sum_sq, dirty.sum_sq)

    gv_clean, gv_dirty = GroupedVariance(), GroupedVariance()
    x = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    gv_clean.update(x)
    bad = torch.cat([x, torch.full((1, 4, 2), float("nan"))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gv_dirty.update(bad)
    assert int(gv_dirty.num_nonfinite) == 1
    assert gv_clean.compute() == gv_dirty.compute()

    strict = GroupedVariance(nonfinite="error")
    with pytest.raises(NonFiniteError, match="nonfinite='skip'"):
        strict.update(bad)


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


def test_cost_tracker_recovers_marginal_cost_and_validates():
    ct = CostTracker()
    for K in (2, 4, 2, 8):
        ct.update(4, K, {"upstream": 0.05 * 4, "teacher": 0.007 + 0.001 * 4 * K, "overhead": 0.003})
    est = ct.compute()
    assert est.c_out == pytest.approx(0.05) and est.c_in == pytest.approx(0.001)
    assert est.c_0 == pytest.approx(0.010)
    with pytest.raises(ConfigError, match="cost of stage 'teacher' must be >= 0 seconds, got -1"):
        ct.update(1, 1, {"teacher": -1.0})
    with pytest.raises(ConfigError, match="unknown cost stage 'render'"):
        ct.update(1, 1, {"render": 1.0})


def test_stage_timer_accumulates_on_cpu():
    t = StageTimer()
    assert not t.uses_cuda_events
    with t:
        sum(range(10000))
    first = t.seconds()
    with t:
        sum(range(10000))
    assert 0 < first < t.seconds()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stage_timer_uses_cuda_events_on_gpu():
    t = StageTimer("cuda")
    assert t.uses_cuda_events
    x = torch.randn(2048, 2048, device="cuda")
    with t:
        for _ in range(10):
            x = x @ x / 2048
    assert t.seconds() > 0
