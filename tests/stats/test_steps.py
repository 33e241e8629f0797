"""The step-gradient statistics (docs/theory.md §7.8): second differences of successive step gradients measure a
policy's group-mean variance, with exact answers on Gaussian draws."""

import math

import pytest
import torch

from carv_adapt.stats.steps import OVERLAP_INFLATION, PolicySegment, SegmentEstimate, StepVariance, pooled_between

P = 40


def policy(K: int = 4, N: int = 2, probs: torch.Tensor | None = None) -> PolicySegment:
    probs = torch.full((5,), 0.2, dtype=torch.float64) if probs is None else probs
    return PolicySegment(N, K, "iid", "binned", probs)


def step_gradient(g: torch.Generator, N: int, K: int, sb: float, sw: float, mean: torch.Tensor) -> torch.Tensor:
    """The mean over N outer draws of (xi_n + mean of K inner noises): trace variance (sb + sw / K) / N."""
    xi = mean + math.sqrt(sb / P) * torch.randn(N, P, generator=g, dtype=torch.float64)
    inner = math.sqrt(sw / P) * torch.randn(N, K, P, generator=g, dtype=torch.float64)
    return (xi + inner.mean(1)).mean(0)


def test_group_mean_variance_is_unbiased_and_a_linear_drift_cancels():
    """Exact: V_g = sb + sw / K. The mean gradient drifts linearly (a first difference would read
    V_g + N |drift|^2 / 2, here about 3 V_g too high); the second difference removes it exactly."""
    N, K, sb, sw = 2, 4, 0.3, 2.0
    g, tracker, drift = torch.Generator().manual_seed(0), StepVariance(), torch.full((P,), 0.2, dtype=torch.float64)
    for t in range(3000):
        tracker.update(step_gradient(g, N, K, sb, sw, t * drift), policy(K, N))
    (est,) = tracker.compute()
    exact = sb + sw / K
    assert abs(est.vg - exact) < 4.0 * est.vg_se, (est.vg, exact, est.vg_se)
    assert est.dof == pytest.approx(2998 / OVERLAP_INFLATION)
    assert est.drift == 0.0  # the lag-two check sees no drift either


def test_the_drift_check_bounds_a_random_walk_of_the_mean_gradient():
    """The mean gradient takes a random walk of trace q per step, e.g. from noisy parameter updates: the lag-one
    estimate reads V_g + N 2q/6 (exact), and the lag-two check reports a bound that, counted as error, covers it;
    pooled, such a segment gives way to the probes."""
    N, K, sb, sw, q = 2, 4, 0.3, 2.0, 0.6
    g, tracker = torch.Generator().manual_seed(5), StepVariance()
    mean = torch.zeros(P, dtype=torch.float64)
    for _ in range(3000):
        mean = mean + math.sqrt(q / P) * torch.randn(P, generator=g, dtype=torch.float64)
        tracker.update(step_gradient(g, N, K, sb, sw, mean), policy(K, N))
    (est,) = tracker.compute()
    exact, bias = sb + sw / K, N * 2.0 * q / 6.0
    assert abs(est.vg - exact - bias) < 4.0 * est.vg_se, (est.vg, exact + bias)  # the lag-one reading is biased
    assert est.drift > 0.5 * bias and abs(est.vg - exact) < 4.0 * math.hypot(est.vg_se, est.drift)
    share = lambda p: sw / p.K  # noqa: E731
    sb_hat, _, dof = pooled_between((sb, 0.05, 10.0), [est], share, 0.0)
    assert dof < 10.0 + 0.05 * est.dof and abs(sb_hat - sb) < 0.1 * bias  # the probes' (exact here) dominate


def test_standard_error_counts_the_overlap_of_successive_differences():
    """The reported standard error matches the spread of the mean over independent replications: without the
    overlap factor it would be sqrt(1.94) too small. The ratio of variances has relative standard error
    sqrt(2 / (R - 1)) over R replications."""
    R, steps = 300, 40
    g, means, ses = torch.Generator().manual_seed(1), [], []
    for _ in range(R):
        tracker = StepVariance()
        for _ in range(steps):
            tracker.update(step_gradient(g, 1, 2, 0.5, 1.0, torch.zeros(P, dtype=torch.float64)), policy(2, 1))
        (est,) = tracker.compute()
        means.append(est.vg)
        ses.append(est.vg_se)
    ratio = float(torch.tensor(means).var()) / float(torch.tensor(ses).pow(2).mean())
    assert abs(ratio - 1.0) < 4.0 * math.sqrt(2.0 / (R - 1)), ratio


def test_a_policy_change_starts_a_segment_and_a_return_reuses_it():
    g, tracker = torch.Generator().manual_seed(2), StepVariance(slots=2)
    zero = torch.zeros(P, dtype=torch.float64)
    for _ in range(5):
        tracker.update(step_gradient(g, 2, 4, 0.3, 2.0, zero), policy(4))
    assert [s.policy.K for s in tracker.compute()] == [4] and tracker.compute()[0].dof * OVERLAP_INFLATION == 3
    for _ in range(2):  # two steps under K = 8: no complete triple yet, so nothing from them
        tracker.update(step_gradient(g, 2, 8, 0.3, 2.0, zero), policy(8))
    assert [s.policy.K for s in tracker.compute()] == [4]
    for _ in range(3):  # back to K = 4: its sums are still there, and its triples start over
        tracker.update(step_gradient(g, 2, 4, 0.3, 2.0, zero), policy(4))
    assert [(s.policy.K, s.dof * OVERLAP_INFLATION) for s in tracker.compute()] == [(4, 4.0)]
    other = policy(4, probs=torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64))
    for _ in range(3):  # a new proposal with both slots taken: the K = 8 slot (no weight) gives way
        tracker.update(step_gradient(g, 2, 4, 0.3, 2.0, zero), other)
    segs = tracker.compute()
    assert [s.policy.same(other) for s in segs] == [False, True] and segs[-1].dof * OVERLAP_INFLATION == 1.0


def test_nonfinite_gradient_is_counted_and_restarts_the_triple():
    g, tracker = torch.Generator().manual_seed(3), StepVariance()
    zero = torch.zeros(P, dtype=torch.float64)
    for i in range(6):
        x = step_gradient(g, 2, 4, 0.3, 2.0, zero)
        if i == 3:
            x[5] = math.nan
        tracker.update(x, policy())
    assert int(tracker.num_nonfinite) == 1
    (est,) = tracker.compute()
    assert est.dof * OVERLAP_INFLATION == 1.0 and math.isfinite(est.vg)  # steps 0-2 only; 4, 5 are two of a new triple


def test_state_dict_round_trips_exactly():
    g = torch.Generator().manual_seed(4)
    a, b = StepVariance(), StepVariance()
    zero = torch.zeros(P, dtype=torch.float64)
    xs = [step_gradient(g, 2, 4, 0.3, 2.0, zero) for _ in range(12)]
    for x in xs[:7]:
        a.update(x, policy())
        a.decay(0.9)
    b.load_state_dict(a.state_dict())
    for x in xs[7:]:
        for t in (a, b):
            t.update(x, policy())
            t.decay(0.9)
    assert [s.to_dict() for s in a.compute()] == [s.to_dict() for s in b.compute()]


def test_pooled_between_subtracts_each_segments_within_share_and_weights_by_dof():
    seg = SegmentEstimate(policy(4), vg=1.0, vg_se=0.1, dof=30.0)
    old = SegmentEstimate(policy(8), vg=0.75, vg_se=0.1, dof=10.0)
    share = lambda p: 2.0 / p.K  # noqa: E731  (sw = 2)
    sb, se, dof = pooled_between((math.nan, math.inf, 0.0), [old, seg], share, 0.0)
    assert (sb, dof) == (pytest.approx(0.5), 40.0)  # both segments read sigma_B^2 = 0.5
    assert se == pytest.approx(math.sqrt((30 * 0.1) ** 2 + (10 * 0.1) ** 2) / 40)
    sb, _, dof = pooled_between((0.9, 0.2, 10.0), [old, seg], share, 0.0)
    assert (sb, dof) == (pytest.approx((10 * 0.9 + 40 * 0.5) / 50), 50.0)
    assert pooled_between((0.9, 0.2, 10.0), [], share, 0.0) == (0.9, 0.2, 10.0)


def test_a_gradient_buffer_the_caller_reuses_is_copied():
    """Passing p.grad itself, which the next backward overwrites, gives what fresh tensors give."""
    g = torch.Generator().manual_seed(6)
    xs = [step_gradient(g, 2, 4, 0.3, 2.0, torch.zeros(P, dtype=torch.float64)) for _ in range(9)]
    fresh, reused, buf = StepVariance(), StepVariance(), torch.empty(P, dtype=torch.float64)
    for x in xs:
        fresh.update(x.clone(), policy())
        reused.update(buf.copy_(x), policy())
    assert [s.to_dict() for s in fresh.compute()] == [s.to_dict() for s in reused.compute()]


def test_second_differences_match_the_direct_ones_and_a_late_nan_leaves_no_trace():
    """Each step adds N ||g_t - 2 g_{t-1} + g_{t-2}||^2 / 6 and its lag-two check, from flat or per-parameter
    gradients alike (the fused buffers reuse the oldest gradient's storage); a non-finite gradient after four
    were held restarts the run without poisoning later steps."""
    g = torch.Generator().manual_seed(7)
    xs = [step_gradient(g, 2, 4, 0.3, 2.0, torch.zeros(P, dtype=torch.float64)) for _ in range(14)]
    flat, parts = StepVariance(), StepVariance()
    for x in xs:
        flat.update(x, policy())
        parts.update([x[:15], x[15:].reshape(5, -1)], policy())
    lag1 = [2 / 6 * float((xs[t] - 2 * xs[t - 1] + xs[t - 2]).pow(2).sum()) for t in range(2, 14)]
    lag2 = [2 / 6 * float((xs[t] - 2 * xs[t - 2] + xs[t - 4]).pow(2).sum()) for t in range(4, 14)]
    for t in (flat, parts):
        assert float(t.wx.sum()) == pytest.approx(sum(lag1), rel=1e-12)
        assert float(t.uy.sum()) == pytest.approx(sum(b - a for a, b in zip(lag1[2:], lag2)), rel=1e-12)
    poisoned = StepVariance()
    for i, x in enumerate(xs):
        poisoned.update(torch.full_like(x, math.nan) if i == 8 else x, policy())
    assert int(poisoned.num_nonfinite) == 1
    after = [t for t in range(11, 14)]  # steps 9, 10 start the new run; 11 on give lag-one differences again
    assert float(poisoned.w.sum()) == len(range(2, 8)) + len(after)
    expect = sum(lag1[:6]) + sum(lag1[t - 2] for t in after)
    assert float(poisoned.wx.sum()) == pytest.approx(expect, rel=1e-12)


def test_a_checkpoint_of_raw_gradients_resumes_the_stream():
    """Checkpoints from before first differences held the last four raw gradients: loading one gives the same
    estimates, up to rounding, as the stream that never stopped; a new checkpoint resumes it to the bit."""
    g = torch.Generator().manual_seed(5)
    grads = [step_gradient(g, 2, 4, 0.3, 2.0, torch.zeros(P, dtype=torch.float64)) for _ in range(40)]
    a = StepVariance()
    for x in grads[:20]:
        a.update(x, policy())
    legacy = a.state_dict()
    for key in ("prev", "diffs", "gram"):
        legacy.pop(key)
    legacy["last"] = [x.clone() for x in grads[16:20]]
    old, new = StepVariance(), StepVariance()
    old.load_state_dict(legacy)
    new.load_state_dict(a.state_dict())
    for x in grads[20:]:
        for t in (a, old, new):
            t.update(x, policy())
    assert torch.equal(new.flat(), a.flat())
    assert torch.allclose(old.flat(), a.flat(), rtol=1e-10, atol=0.0)


def test_float32_gradients_with_a_mean_far_above_the_noise_keep_their_second_differences():
    """The products are of first differences, which carry noise and drift but not the mean gradient: in float32,
    with a mean 1000 times the noise's scale per coordinate, the estimates match a float64 computation."""
    g = torch.Generator().manual_seed(11)
    mean = 1000.0 * torch.randn(4096, generator=g, dtype=torch.float64)
    xs = [mean + torch.randn(4096, generator=g, dtype=torch.float64) for _ in range(12)]
    tracker = StepVariance()
    for x in xs:
        tracker.update(x.float(), policy())
    xs32 = [x.float().double() for x in xs]  # the same float32 inputs, differenced in float64
    lag1 = [2 / 6 * float((xs32[t] - 2 * xs32[t - 1] + xs32[t - 2]).pow(2).sum()) for t in range(2, 12)]
    assert float(tracker.wx.sum()) == pytest.approx(sum(lag1), rel=1e-5)
