"""GroupedVariance (docs/theory.md §7): unbiased between/within on a nested model, and the split-half probe."""

import math

import pytest
import torch

from carv_adapt.stats import GroupedVariance, split_half_within


def _nested(g, N, K, D, sb, sw):
    """x_nk = a_n + b_nk with tr Cov(a) = D sb^2 (between) and tr Cov(b) = D sw^2 (within)."""
    return (
        1.5
        + sb * torch.randn(N, 1, D, generator=g, dtype=torch.float64)
        + sw * torch.randn(N, K, D, generator=g, dtype=torch.float64)
    )


@pytest.mark.slow
@pytest.mark.parametrize("N, K", [(2, 2), (5, 3), (3, 7)])
def test_between_within_unbiased_on_nested_model(N, K):
    g = torch.Generator().manual_seed(10 + N + K)
    D, sb, sw = 6, 0.8, 1.7
    R = 3000
    est_b, est_w = torch.empty(R, dtype=torch.float64), torch.empty(R, dtype=torch.float64)
    gv = GroupedVariance()
    for r in range(R):
        gv.reset()  # a fresh tracker per repetition (construction declares every state; reset restores them)
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


def test_single_draw_probes_pair_up_for_the_between_variance():
    """N = 1 probes keep their group mean (the chunked reduction drops it where nothing reads it): successive
    probes then estimate sigma_B^2 without bias (exact answer D sb^2)."""
    g = torch.Generator().manual_seed(5)
    K, D, sb, sw = 4, 6, 0.9, 0.8
    gv = GroupedVariance()
    for _ in range(2000):
        x = _nested(g, 1, K, D, sb, sw)
        gv.update_split_half(x[:, 0::2].mean(1), x[:, 1::2].mean(1), K)
    est = gv.compute()
    assert abs(est.sigma_b2 - D * sb**2) < 4 * est.sigma_b2_se and est.sigma_b2_se < 0.1 * D * sb**2
    assert abs(est.sigma_w2 - D * sw**2) < 4 * est.sigma_w2_se


def test_signal_g2_is_unbiased_from_cross_draw_products():
    """|G|^2 from products of different outer draws' gradients: exact answer D mu0^2 on the nested model."""
    g = torch.Generator().manual_seed(3)
    D, N, K, mu0, sb = 6, 4, 4, 0.7, 0.5
    gv = GroupedVariance()
    for _ in range(2000):
        xi = mu0 + sb * torch.randn(N, 1, D, generator=g, dtype=torch.float64)
        gv.update(xi + 2.0 * torch.randn(N, K, D, generator=g, dtype=torch.float64))
    est = gv.compute()
    assert abs(est.G2 - D * mu0**2) < 4 * est.G2_se and est.G2_se < 0.05 * D * mu0**2


def test_one_outer_draw_per_step_identifies_between_from_successive_steps():
    """N = 1: ||g_t - g_{t-1}||^2 / 2 less the group-mean variances estimates sigma_B^2 without bias on a
    stationary problem, and the state (the last step's mean) round-trips."""
    g = torch.Generator().manual_seed(4)
    D, K, sb = 5, 3, 0.8
    gv = GroupedVariance()
    for i in range(3000):
        xi = 0.3 + sb * torch.randn(1, 1, D, generator=g, dtype=torch.float64)
        gv.update(xi + torch.randn(1, K, D, generator=g, dtype=torch.float64))
        if i == 1500:
            back = GroupedVariance()
            back.load_state_dict(gv.state_dict())
            assert back.compute() == gv.compute() and torch.equal(back._prev[0], gv._prev[0])
    est = gv.compute()
    assert abs(est.sigma_b2 - D * sb**2) < 4 * est.sigma_b2_se
    assert abs(est.G2 - D * 0.09) < 4 * est.G2_se


def test_stratified_within_weights_every_stratum_alike_when_the_noise_peaks_at_an_end():
    """Diffusion integrands are noisiest at one end of the timestep range (measured on the attribution workload:
    stratum variances 1.6, 0.27, 0.03, 0.006 at K = 4). Second differences of adjacent strata weight the end
    strata 1/6, under-state a group mean's variance there and bias sigma_B^2 high; the split and pair estimates
    weight every stratum alike (docs/theory.md §7.4). No trend: both are unbiased, and so is sigma_B^2."""
    g = torch.Generator().manual_seed(3)
    D, N, K, sb = 8, 4, 4, 0.3
    gv, second = GroupedVariance(), []
    for _ in range(2000):
        xi = sb * torch.randn(N, 1, D, generator=g, dtype=torch.float64)
        u = (torch.arange(K, dtype=torch.float64) + torch.rand(N, K, generator=g, dtype=torch.float64)) / K
        x = xi + (0.1 + 2.0 * torch.exp(-u / 0.1))[..., None] * torch.randn(N, K, D, generator=g, dtype=torch.float64)
        gv.update(x, design="stratified")
        d = x[:, :-2] - 2 * x[:, 1:-1] + x[:, 2:]  # the former estimate, on the same draws
        sw2 = float(d.pow(2).sum()) / (6 * N * (K - 2))
        means = x.mean(1)
        second.append(float((means - means.mean(0)).pow(2).sum()) / (N - 1) - sw2 / K)
    est, true = gv.compute(), D * sb**2
    assert abs(est.sigma_b2 - true) < 4 * est.sigma_b2_se
    old = torch.tensor(second)
    assert float(old.mean()) > true + 4 * float(old.std()) / math.sqrt(len(second))  # the defect, same draws


def test_stratified_within_takes_the_smaller_pooled_estimate():
    """A linear trend of the stratum means inflates the split estimate (its halves' means differ by a stratum's
    step) but cancels in the pair estimate's cross term; each step's within is the smaller pooled one."""
    g = torch.Generator().manual_seed(4)
    N, K, D = 3, 8, 4
    gv = GroupedVariance()
    for _ in range(200):
        u = (torch.arange(K, dtype=torch.float64) + torch.rand(N, K, generator=g, dtype=torch.float64)) / K
        x = 4.0 * u[..., None] + 0.2 * torch.randn(N, K, D, generator=g, dtype=torch.float64)
        gv.update(x, design="stratified")
    split, pairs = float(gv.strat_split), float(gv.strat_pairs)
    assert pairs < split
    # Stratum noise 0.04 D plus the within-stratum spread of the trend, 16 / (12 K^2) per coordinate.
    est = gv.compute()
    assert abs(est.sigma_w2 - D * (0.04 + 16 / (12 * K * K))) < 4 * est.sigma_w2_se


def test_odd_k_leaves_out_the_middle_stratum_and_weights_the_rest_alike():
    """At odd K the split's halves differ in size and both end strata fall in the larger one; the estimates use the
    K - 1 strata other than the middle one instead. Exact: with stratum standard deviations s_k and no trend, both
    sums have expectation N * mean_{k != middle} s_k^2 * D."""
    from carv_adapt.variance import stratum_within_from_groups

    g = torch.Generator().manual_seed(5)
    N, K, D = 4000, 5, 3
    s = torch.tensor([3.0, 1.0, 0.5, 0.5, 0.2], dtype=torch.float64)
    x = s[None, :, None] * torch.randn(N, K, D, generator=g, dtype=torch.float64)
    split, pairs, groups = stratum_within_from_groups(x)
    assert groups == N
    exact = D * float((s[[0, 1, 3, 4]] ** 2).mean())
    # Per-group split and pair estimates, whose spread gives the standard error of their means.
    rest = x[:, [0, 1, 3, 4]]
    per_split = (rest[:, 0::2].mean(1) - rest[:, 1::2].mean(1)).pow(2).sum(-1)
    d = rest[:, 0::2] - rest[:, 1::2]
    per_pairs = d.pow(2).sum(-1).mean(1) / 2 - (d[:, 0] * d[:, 1]).sum(-1) / 2
    for total, per in ((split, per_split), (pairs, per_pairs)):
        assert float(total) == pytest.approx(float(per.sum()), rel=1e-10)
        assert abs(float(total) / N - exact) < 4 * float(per.std()) / math.sqrt(N)


def _stream(seed, steps=75):
    """Steps of varying shape and design (a new K or design flushes the deferred ones), one non-finite."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(steps):
        K = 4 if s < 40 else 5
        x = _nested(g, 3, K, 6, 0.8, 1.7).float()
        w = 0.5 + torch.rand(3, K, generator=g, dtype=torch.float64)
        if s == 20:
            x[1, 2, 0] = float("nan")
        out.append((x, w, "stratified" if s % 30 < 25 else "iid"))
    return out


def test_deferred_updates_equal_immediate_ones_under_forgetting():
    """Deferred small steps, reduced in batches with the forgetting they missed, give the sums of immediate
    updates (up to rounding), and a non-finite step is dropped and counted when it is seen."""
    now, later = GroupedVariance(), GroupedVariance()
    for i, (x, w, design) in enumerate(_stream(0)):
        now.update(x, w, design=design)
        later.update(x, w, design=design, defer=True)
        assert float(later.num_nonfinite) == float(now.num_nonfinite)
        now.decay(0.9)
        later.decay(0.9)
        if i in (10, 41, 74):  # reads fold the deferred steps into a copy and leave the stream as it was
            assert later._pending
            a, b = now.compute(), later.compute()
            for field in ("sigma_b2", "sigma_w2", "sigma_w2_iid", "phi", "M2", "sigma_b2_se", "groups"):
                assert getattr(b, field) == pytest.approx(getattr(a, field), rel=1e-9), field
    assert float(now.num_nonfinite) == 1.0
    assert torch.allclose(later.flat(), now.flat(), rtol=1e-12, atol=0.0)


def test_deferred_steps_survive_a_state_dict_round_trip_exactly():
    """A checkpoint holds the deferred steps themselves, so taking one does not change when they are reduced."""
    stream = _stream(1)
    a = GroupedVariance()
    for x, w, design in stream[:30]:
        a.update(x, w, design=design, defer=True)
        a.decay(0.95)
    b = GroupedVariance()
    b.load_state_dict(a.state_dict())
    assert len(b._pending) == len(a._pending) > 0
    for x, w, design in stream[30:]:
        for t in (a, b):
            t.update(x, w, design=design, defer=True)
            t.decay(0.95)
    assert torch.equal(a.flat(), b.flat())


def test_a_batch_of_deferred_steps_adds_to_the_bit_what_one_at_a_time_adds():
    """Without forgetting, where the deferred steps are flushed does not change a single bit of the sums: a batch
    is added row after row, in the order the steps came (the stratified choice included)."""
    stream = [(x, w, d) for x, w, d in _stream(2) if all(bool(torch.isfinite(t).all()) for t in (x, w))]
    full, often = GroupedVariance(), GroupedVariance()
    for i, (x, w, design) in enumerate(stream):
        full.update(x, w, design=design, defer=True)
        often.update(x, w, design=design, defer=True)
        if i % 5 == 4:
            often.flush()
    full.flush()
    often.flush()
    assert torch.equal(full.flat(), often.flat())


def test_held_steps_of_alternating_kinds_stay_held_and_add_up_as_immediate_ones():
    """A warm-up cycling K alternates two shapes (and here two designs): they are held together, reduced per kind,
    and added in the order they came, so the sums are those of immediate updates; without forgetting, to the bit
    whatever the flush points."""
    g = torch.Generator().manual_seed(3)
    stream = []
    for s in range(70):
        K = (2, 4, 3)[s % 3]
        x = _nested(g, 2, K, 5, 0.6, 1.3).float()
        stream.append((x, 0.5 + torch.rand(2, K, generator=g, dtype=torch.float64), ("iid", "stratified")[s % 2]))
    now, later, often = GroupedVariance(), GroupedVariance(), GroupedVariance()
    for i, (x, w, design) in enumerate(stream):
        now.update(x, w, design=design)
        later.update(x, w, design=design, defer=True, finite=True)
        often.update(x, w, design=design, defer=True)
        if i == 5:
            assert len({p[0].shape for p in later._pending}) == 3 and len(later._pending) == 6
        if i % 7 == 6:
            often.flush()
    later.flush()
    often.flush()
    assert torch.equal(later.flat(), often.flat())
    assert torch.allclose(later.flat(), now.flat(), rtol=1e-12, atol=0.0)


def test_between_estimates_weighted_by_their_precision_are_unbiased_and_far_less_noisy():
    """docs/theory.md §7.10: a warm-up of K = 2 steps with a large within variance, then K = 16 steps. Weighted by
    the precision a reference (set every ten steps from the estimates so far, as a controller does) predicts, the
    pooled sigma_B^2 stays unbiased, its variance over repetitions falls far below that of the
    degrees-of-freedom pool (about 25x here), and its standard error does not understate the spread."""
    from carv_adapt.stats.base import reliability_mean_se

    g = torch.Generator().manual_seed(7)
    D, sb, R = 4, 0.3, 200
    prec, dof, se2 = (torch.empty(R, dtype=torch.float64) for _ in range(3))
    gv = GroupedVariance()
    for r in range(R):
        gv.reset()
        for s in range(40):
            K, sw = (2, 2.0) if s < 20 else (16, 1.0)
            gv.update(_nested(g, 2, K, D, sb, sw), defer=True)
            gv.decay(0.97)
            if s % 10 == 9:
                out = gv.compute()
                gv.set_reference(out.sigma_b2, out.sigma_w2)
        out, v = gv.compute(), gv.scalars()
        prec[r], se2[r] = out.sigma_b2, out.sigma_b2_se**2
        dof[r] = reliability_mean_se(v["dof_b"], v["dof_b2"], v["sb_num"], v["sb_sq"])[0]
    exact = D * sb**2
    assert abs(float((prec.mean() - exact) / (prec.std() / math.sqrt(R)))) < 4.0
    # Sample variances of R draws each: their ratio's 99.99 % range under equal variances is within a factor 1.7.
    assert float(dof.var() / prec.var()) > 4.0
    # The mean squared standard error is not below the spread (by more than four standard errors of a variance).
    assert float(se2.mean() / prec.var()) > 1.0 - 4.0 * math.sqrt(2.0 / (R - 1))


def test_a_reference_whose_scale_grew_brings_the_held_weights_along():
    """docs/theory.md §7.10: sigma_B^2 jumps 100-fold after 20 steps (distillation's grew from ~30 to ~3000 within
    60 steps). Weighted by each reference's absolute precision, the early estimates of the 100x smaller quantity
    outweigh the later ones by ~200x per degree of freedom and hold the pool at 0.69 of the forgetting-weighted dof
    pool (mean of 20 runs, at most 0.81); rescaled once the reference's scale grows beyond its own noise (its
    standard errors passed), 0.94."""
    from carv_adapt.stats.base import reliability_mean_se

    g = torch.Generator().manual_seed(11)
    D, N, K, sw = 4, 4, 4, 1.0
    ratios = []
    for _ in range(20):
        gv = GroupedVariance()
        for s in range(60):
            gv.update(_nested(g, N, K, D, math.sqrt((0.04 if s < 20 else 4.0) / D), sw))
            gv.decay(0.97)
            if s % 10 == 9:
                out = gv.compute()
                gv.set_reference(out.sigma_b2, out.sigma_w2, None, (out.sigma_b2_se, out.sigma_w2_se, math.inf))
        v = gv.scalars()
        ratios.append(gv.compute().sigma_b2 / reliability_mean_se(v["dof_b"], v["dof_b2"], v["sb_num"], v["sb_sq"])[0])
    assert 0.85 < sum(ratios) / len(ratios) < 1 / 0.85, ratios


def test_a_first_reference_converts_the_degrees_of_freedom_pool_without_changing_it():
    """With one degree of freedom per step (N = 2) the first reference rescales the pool alike: the estimate and
    its standard error stay; a reference without a positive within variance is ignored; the reference is state."""
    g = torch.Generator().manual_seed(8)
    gv = GroupedVariance()
    for s in range(12):
        gv.update(_nested(g, 2, 2 + 2 * (s % 2), 3, 0.5, 1.0))
        gv.decay(0.9)
    before = gv.compute()
    gv.set_reference(before.sigma_b2, math.nan)
    assert gv.scalars()["prec_w"] == 0.0
    gv.set_reference(before.sigma_b2, before.sigma_w2)
    after = gv.compute()
    assert gv.scalars()["prec_w"] > 0
    assert after.sigma_b2 == pytest.approx(before.sigma_b2, rel=1e-12)
    assert after.sigma_b2_se == pytest.approx(before.sigma_b2_se, rel=1e-12)
    resumed = GroupedVariance()
    resumed.load_state_dict(gv.state_dict())
    x = _nested(g, 2, 8, 3, 0.5, 1.0)
    gv.update(x)
    resumed.update(x)
    assert resumed.compute() == gv.compute()
