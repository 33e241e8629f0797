"""docs/theory.md §18: common random numbers across items. Replayed plans are bit-identical, every item's estimate
stays unbiased, the controller's statistics see the comparison between items, state round-trips mid-group, and
misuse fails with the fix."""

import math

import pytest
import torch

from carv_adapt import AdaptiveController, HierarchicalEstimator, UniformProposal, defensive_mixture
from carv_adapt.crn import CRNGroup, fold_items
from carv_adapt.errors import ConfigError, StateError
from carv_adapt.proposals import TargetMeasure, teacher_weight_proposal
from carv_adapt.stats import GroupedVariance
from carv_adapt.teachers import GaussianTeacher, exact_sds_expectation, sds_integrand, sds_weight

D = 3
TEACHER = GaussianTeacher(torch.tensor([0.5, -1.0, 2.0]), std=0.7)
TARGET = TargetMeasure(1000, t_min=20, t_max=980)
W_T = sds_weight(TEACHER.alphas_cumprod, "sigma2")
# Four items (e.g. training examples): item i's outer draws are x ~ N(MEANS[i], X_SD^2 I).
MEANS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, -0.5], [-1.0, 1.0, 0.5], [0.3, -0.2, 1.5]], dtype=torch.float64)
X_SD = 0.4
M = MEANS.shape[0]


def _controller(**kw):
    base = dict(num_timesteps=1000, t_min=20, t_max=980, num_bins=10, batch_size=3, warmup_steps=8, refit_every=4)
    return AdaptiveController(**{**base, **kw})


def _item(plan, i):
    """Item ``i``'s ``N x K x D`` contributions under ``plan``; its outer normals come from the plan's seed, so
    replayed plans share them as well (the workload's choice: all random numbers common)."""
    z = torch.randn(plan.N, D, generator=torch.Generator().manual_seed(plan.noise_seed ^ 1), dtype=torch.float64)
    x = MEANS[i] + X_SD * z
    return sds_integrand(TEACHER, x, plan.t, plan.noise((D,), dtype=torch.float64), W_T)


def test_replay_is_bit_identical_across_items():
    est = HierarchicalEstimator(UniformProposal(TARGET), N=2, K=4, seed=3)
    with est.crn_group(3):
        plans = [est.plan() for _ in range(3)]
    nxt = est.plan()  # grouping closed: fresh draws
    for p in plans[1:]:
        assert torch.equal(p.t, plans[0].t) and torch.equal(p.rho, plans[0].rho)
        assert p.noise_seed == plans[0].noise_seed and torch.equal(p.noise((5,)), plans[0].noise((5,)))
    assert [p.step for p in plans] == [0, 1, 2] and nxt.noise_seed != plans[0].noise_seed
    again = est.replay()
    assert torch.equal(again.t, nxt.t) and again.noise_seed == nxt.noise_seed and again.step == 4

    ctrl = _controller()
    group = ctrl.crn_group(M)
    seen = []
    for i in range(M):
        plan = ctrl.plan()
        seen.append(plan)
        ctrl.observe(plan, _item(plan, i))
        ctrl.step()
    group.close()
    assert all(torch.equal(p.t, seen[0].t) and torch.equal(p.rho, seen[0].rho) for p in seen)
    assert all(torch.equal(p.noise((D,)), seen[0].noise((D,))) for p in seen)
    assert ctrl.plan().noise_seed != seen[0].noise_seed  # grouping closed: fresh draws


@pytest.mark.parametrize(
    "policy", ["uniform iid K=1", "IS stratified K=4", pytest.param("controller", marks=pytest.mark.slow)]
)
def test_each_item_stays_unbiased_under_crn(policy):
    R = 300
    prior = defensive_mixture(teacher_weight_proposal(TARGET, W_T, TEACHER.alphas_cumprod), 0.2)
    if policy == "controller":
        sampler = _controller(seed=5)
    elif policy == "uniform iid K=1":
        sampler = HierarchicalEstimator(UniformProposal(TARGET), N=2, K=1, stratification="iid", seed=5)
    else:
        sampler = HierarchicalEstimator(prior, N=2, K=4, stratification="stratified", seed=6)
    ctrl = sampler if policy == "controller" else None
    vals = torch.zeros(R, M, D, dtype=torch.float64)
    with sampler.crn_group(M):
        for r in range(R):
            for i in range(M):
                plan = sampler.plan()
                f = _item(plan, i)
                vals[r, i] = plan.weighted_mean(f)
                if ctrl is not None:
                    ctrl.observe(plan, f)
                    ctrl.step()
    exact = torch.stack([exact_sds_expectation(TEACHER, m, TARGET.pmf(), W_T) for m in MEANS])
    z = (vals.mean(0) - exact) / (vals.std(0) / math.sqrt(R))
    assert float(z.abs().max()) < 4.0, z
    # Draws are shared: the items' errors move together (the point of common random numbers).
    err = (vals - exact).reshape(R, M, D)
    corr = torch.corrcoef(torch.stack([err[:, 0, 0], err[:, 1, 0]]))[0, 1]
    assert float(corr) > 4 / math.sqrt(R), corr  # independent draws: 0 +- 1/sqrt(R)


def test_controller_sees_the_comparison_between_items():
    # With every random number shared, the SDS integrand is affine in (x - mean, eps) with item-independent
    # coefficients, so the centred contribution of item i is w c_t (m_i - mbar): no noise, no between variance,
    # only the timestep variance of w c. Exact (docs/theory.md §18): profile (w c_t)^2 S, sigma_B^2 = 0,
    # sigma_W^2 = Var_{t~pi}(w c) S with S = mean_i ||m_i - mbar||^2.
    ctrl = _controller(stratification="iid", warmup_steps=10**6, forgetting=1.0, warmup_k=(4,))
    with ctrl.crn_group(M):
        for _ in range(60 * M):
            plan = ctrl.plan()
            ctrl.observe(plan, _item(plan, plan.step % M))
            ctrl.step()
    c, _ = TEACHER.coefficients()
    S = float(((MEANS - MEANS.mean(0)) ** 2).sum(1).mean())
    pi, wc = TARGET.pmf(), W_T * c
    bw = ctrl.grouped.compute()
    sw_exact = float((pi * wc**2).sum() - (pi * wc).sum() ** 2) * S
    assert abs(bw.sigma_w2 - sw_exact) < 4 * bw.sigma_w2_se, (bw.sigma_w2, sw_exact, bw.sigma_w2_se)
    assert abs(bw.sigma_b2) < 4 * bw.sigma_b2_se + 1e-12, (bw.sigma_b2, bw.sigma_b2_se)
    profile = ctrl.profile.folded()  # the controller defers small steps; reads go through folded()
    n, s = profile.count, profile.sum_sq
    t = ctrl.profile.edges
    exact_m = torch.stack([(pi[a:b] * wc[a:b] ** 2).sum() / pi[a:b].sum() for a, b in zip(t[:-1], t[1:])]) * S
    seen = n > 0
    assert seen.sum() >= 8
    # Each observation is exact, but a bin averages (w c)^2 over the timesteps that fell in it.
    assert torch.allclose((s / n.clamp_min(1))[seen], exact_m[seen], rtol=0.2)
    # One folded observation per shared draw: 60 groups of N K = 12 draws, not M times as many.
    assert float(n.sum()) == 60 * 3 * 4


def test_fold_is_the_mean_over_items():
    g = torch.Generator().manual_seed(0)
    items = [torch.randn(3, 4, 5, generator=g, dtype=torch.float64) for _ in range(M)]
    rho = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.5
    for center in (False, True):
        folded = fold_items(items, center)
        assert folded.shape == (3, 4, M * 5)
        base = items if not center else [x - torch.stack(items).mean(0) for x in items]
        sq = torch.stack([x.pow(2).sum(-1) for x in base]).mean(0)
        assert torch.allclose(folded.pow(2).sum(-1), sq)
        joint, per_item = GroupedVariance(), []
        joint.update(folded, rho)
        for x in base:
            tracker = GroupedVariance()
            tracker.update(x, rho)
            per_item.append(tracker.compute())
        got = joint.compute()
        assert got.sigma_w2 == pytest.approx(sum(b.sigma_w2 for b in per_item) / M)
        assert got.sigma_b2 == pytest.approx(sum(b.sigma_b2 for b in per_item) / M)


def test_state_dict_round_trips_with_a_replayed_plan():
    def run(ctrl, items):
        out = []
        for i in items:
            plan = ctrl.plan()
            ctrl.observe(plan, _item(plan, i % M))
            ctrl.step()
            out.append(plan)
        return out

    a = _controller(seed=1)
    a.crn_group(M)
    run(a, range(M + 2))  # one group, then two items into the second
    state = a.state_dict()
    b = _controller(seed=99, batch_size=5)  # differently configured: becomes the saved one
    b.load_state_dict(state)
    pa, pb = run(a, range(2, 2 * M)), run(b, range(2, 2 * M))
    for x, y in zip(pa, pb):
        assert torch.equal(x.t, y.t) and torch.equal(x.rho, y.rho) and x.noise_seed == y.noise_seed
    assert pa[0].noise_seed == pa[1].noise_seed  # still replaying the restored group's plan
    assert torch.equal(a.profile.sum_sq, b.profile.sum_sq) and torch.equal(a.grouped.sw_num, b.grouped.sw_num)

    est = HierarchicalEstimator(UniformProposal(TARGET), N=2, K=3, seed=4)
    first = est.plan()
    saved = est.state_dict()
    other = HierarchicalEstimator(UniformProposal(TARGET), N=2, K=3, seed=77)
    other.load_state_dict(saved)
    again = other.replay()
    assert torch.equal(again.t, first.t) and again.noise_seed == first.noise_seed
    assert other.plan().noise_seed == est.plan().noise_seed  # the generators agree too


def test_misuse_fails_with_the_fix():
    est = HierarchicalEstimator(UniformProposal(TARGET), N=2, K=3)
    with pytest.raises(StateError, match="call plan"):
        est.replay()
    ctrl = _controller()
    group = ctrl.crn_group(M)
    with pytest.raises(StateError, match="close"):
        ctrl.crn_group(M)
    plan = ctrl.plan()
    with pytest.raises(StateError, match="contributions"):
        ctrl.observe(plan, sq_norms=torch.ones(3, 2))
    ctrl.observe(plan, _item(plan, 0))
    with pytest.raises(StateError, match="twice"):
        ctrl.observe(plan, _item(plan, 0))
    ctrl.step()
    with pytest.raises(StateError, match="finish the group"):
        group.close()
    group.close(discard=True)
    plan = ctrl.plan()
    with pytest.raises(StateError, match="after step"):
        ctrl.crn_group(M)
    ctrl.observe(plan, _item(plan, 0))
    ctrl.step()
    with pytest.raises(ConfigError, match="items"):
        ctrl.crn_group(1)
    assert isinstance(ctrl.crn_group(1, center=False), CRNGroup)
