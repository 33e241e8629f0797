"""The online controller (docs/theory.md §8): convergence to the oracle, exact resume, call order, and validation of
what observe() is given (examples and a property test)."""

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from carv_adapt import AdaptiveController, CarvError, ConfigError, ShapeError, StateError
from carv_adapt.proposals import bin_sums
from carv_adapt.variance import total_variation
from carv_adapt.workloads import SyntheticNested

T, BINS = 200, 10


def _workload(ctrl):
    s = 0.3 + 3.0 * torch.linspace(0, 1, BINS, dtype=torch.float64) ** 2
    return SyntheticNested(ctrl.target, ctrl.edges, s, D=16, sb=1.0, mu0=0.5, c_out=0.010, c_in=0.001)


def _run(ctrl, wl, steps, g):
    for _ in range(steps):
        plan = ctrl.plan()
        ctrl.observe(plan, wl.contributions(plan, g), costs=wl.costs(plan))
        ctrl.step()


CONVERGENCE_STEPS = 150  # the README states this bound


def test_controller_converges_to_oracle():
    ctrl = AdaptiveController(
        num_timesteps=T,
        num_bins=BINS,
        batch_size=8,
        warmup_steps=20,
        refit_every=10,
        alpha=0.05,
        smoothing=0,
        stratification="iid",
        seed=0,
    )
    wl = _workload(ctrl)
    oracle = wl.oracle(alpha=0.0)
    assert 3 <= oracle.K <= 10  # a regime where K and IS both matter
    _run(ctrl, wl, CONVERGENCE_STEPS, torch.Generator().manual_seed(1))
    p_ctrl = bin_sums(ctrl.proposal.pmf(), ctrl.edges)
    assert abs(ctrl.K - oracle.K) <= 1, (ctrl.K, oracle.K)
    assert total_variation(p_ctrl, oracle.p) < 0.1
    last = ctrl.history[-1]
    assert last.c_out == pytest.approx(wl.c_out) and last.c_in == pytest.approx(wl.c_in)
    assert last.predicted_ecm == pytest.approx(oracle.ecm, rel=0.15)


def _resumed(a, g):
    """A differently configured controller loaded with ``a``'s state (it must then behave exactly like ``a``),
    and a copy of the draws' generator."""
    b = AdaptiveController(num_timesteps=50, num_bins=5, batch_size=1, seed=99)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    g_b = torch.Generator()
    g_b.set_state(g.get_state())
    return b, g_b


def test_state_dict_round_trip_gives_identical_next_plans():
    kw = dict(num_timesteps=T, num_bins=BINS, batch_size=3, warmup_steps=6, refit_every=4, seed=5)
    a = AdaptiveController(**kw)
    wl = _workload(a)
    g = torch.Generator().manual_seed(2)
    _run(a, wl, 15, g)
    b, g_b = _resumed(a, g)
    for _ in range(20):
        pa, pb = a.plan(), b.plan()
        assert (pa.N, pa.K, pa.noise_seed) == (pb.N, pb.K, pb.noise_seed)
        assert torch.equal(pa.t, pb.t) and torch.equal(pa.rho, pb.rho)
        fa, fb = wl.contributions(pa, g), wl.contributions(pb, g_b)
        a.observe(pa, fa, costs=wl.costs(pa))
        b.observe(pb, fb, costs=wl.costs(pb))
        a.step()
        b.step()
    assert len(a.history) == len(b.history) and repr(a.history[-1]) == repr(b.history[-1])


def _observe_in_parameter_space(ctrl, plan, f, wl):
    wf = plan.weights_like(f) * f  # parameter map I: probe halves and the step gradient of the same estimate
    probe = (wf[:, 0::2].mean(1), wf[:, 1::2].mean(1)) if plan.K >= 2 and ctrl.probe_due() else None
    ctrl.observe(plan, f, costs=wl.costs(plan), probe=probe, grad=plan.weighted_mean(f))
    ctrl.step()


def test_state_dict_round_trip_with_step_gradients_and_from_a_checkpoint_without_them():
    """The step statistics (segments, their policies, the last two gradients) resume exactly; a checkpoint saved
    before they existed loads with them empty."""
    kw = dict(num_timesteps=T, num_bins=BINS, batch_size=2, warmup_steps=6, refit_every=4, seed=5, space="parameter")
    a = AdaptiveController(**kw)
    wl = _workload(a)
    g = torch.Generator().manual_seed(3)
    for _ in range(25):
        plan = a.plan()
        _observe_in_parameter_space(a, plan, wl.contributions(plan, g), wl)
    assert a.statistics().steps and "step gradients" in a.history[-1].reason
    state = copy.deepcopy(a.state_dict())
    b, g_b = _resumed(a, g)
    for _ in range(12):
        pa, pb = a.plan(), b.plan()
        _observe_in_parameter_space(a, pa, wl.contributions(pa, g), wl)
        _observe_in_parameter_space(b, pb, wl.contributions(pb, g_b), wl)
    assert repr(a.history[-1]) == repr(b.history[-1])  # repr: NaN predictions (no signal yet) compare equal
    old = {k: v for k, v in state.items() if k != "steps"}
    c = AdaptiveController(**kw)
    c.load_state_dict(old)
    assert c.statistics().steps == ()


def test_probe_schedule_reads_statistics_that_forgetting_cannot_change():
    """The probe schedule reduces the probe statistics once per probe: forgetting scales every sum of a
    reliability-weighted mean alike, so between probes a fresh reduction gives the same estimates and relative
    errors as the one kept."""
    kw = dict(num_timesteps=T, num_bins=BINS, batch_size=2, warmup_steps=6, refit_every=4, seed=5, space="parameter")
    a = AdaptiveController(**kw, forgetting=0.8)
    wl = _workload(a)
    g = torch.Generator().manual_seed(3)
    checked = 0
    for _ in range(40):
        plan = a.plan()
        _observe_in_parameter_space(a, plan, wl.contributions(plan, g), wl)
        kept, fresh = a._probe_stats(), a.param_grouped.compute()
        if a._last_probe is not None and a._last_probe < a.step_count - 1:  # decayed since the last probe
            checked += 1
            for field in ("sigma_b2", "sigma_w2", "G2"):
                v, se = getattr(fresh, field), getattr(fresh, field + "_se")
                assert getattr(kept, field) == pytest.approx(v, rel=1e-12)
                assert getattr(kept, field + "_se") / abs(getattr(kept, field)) == pytest.approx(se / abs(v), rel=1e-9)
    assert checked > 5


def test_call_order_errors_say_the_fix():
    c = AdaptiveController(num_timesteps=T, num_bins=BINS)
    with pytest.raises(StateError, match="call plan"):
        c.step()
    p = c.plan()
    with pytest.raises(StateError, match="call step"):
        c.plan()
    c.observe(p, torch.zeros(p.N, p.K, 2))
    with pytest.raises(StateError, match="observe\\(\\) called twice"):
        c.observe(p, torch.zeros(p.N, p.K, 2))
    with pytest.raises(StateError, match="after step"):
        c.state_dict()
    c.step()
    with pytest.raises(StateError, match="plan returned by this step"):
        c.observe(p, torch.zeros(p.N, p.K, 2))


def test_wrong_shapes_and_negative_costs_are_rejected():
    c = AdaptiveController(num_timesteps=T, num_bins=BINS, batch_size=2)
    p = c.plan()
    with pytest.raises(ShapeError, match="contributions: shape \\(3, 2, 5\\)"):
        c.observe(p, torch.zeros(3, p.K, 5))
    with pytest.raises(ShapeError, match="sq_norms"):
        c.observe(p, sq_norms=torch.zeros(p.N))
    with pytest.raises(ConfigError, match="unknown cost stage 'render'"):
        c.observe(p, costs={"render": 1.0})
    c.observe(p, costs={"upstream": -2.0})
    with pytest.raises(ConfigError, match="cost of stage 'upstream' must be >= 0 seconds, got -2.0"):
        c.step()


def test_nonfinite_contributions_leave_statistics_unchanged_and_are_counted():
    kw = dict(num_timesteps=T, num_bins=BINS, batch_size=4, warmup_steps=5, refit_every=5, seed=3, forgetting=1.0)
    clean, dirty = AdaptiveController(**kw), AdaptiveController(**kw)
    wl = _workload(clean)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    expected = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(30):
            pc, pd = clean.plan(), dirty.plan()
            fc, fd = wl.contributions(pc, g1), wl.contributions(pd, g2)
            if s % 7 == 3:
                # A poisoned step: the clean run observes nothing, the dirty run only non-finite values.
                fd[:, 0, 0] = float("nan")
                fd[:, 1:] = float("inf")
                dirty.observe(pd, fd)
                clean.observe(pc)
                expected += pd.N + pd.N * pd.K  # every group and every squared norm is dropped
            else:
                clean.observe(pc, fc, costs=wl.costs(pc))
                dirty.observe(pd, fd, costs=wl.costs(pd))
            clean.step()
            dirty.step()
    assert clean.num_nonfinite == 0
    assert dirty.num_nonfinite == expected > 0
    assert sum(issubclass(w.category, RuntimeWarning) for w in caught) == 2  # once per statistic
    for name in ("grouped", "profile", "costs"):
        a, b = getattr(clean, name).folded(), getattr(dirty, name).folded()
        for state in a.state_names:
            if state != "num_nonfinite":
                assert torch.equal(getattr(a, state), getattr(b, state)), (name, state)
    assert [r.K for r in clean.history] == [r.K for r in dirty.history]


@settings(max_examples=60, deadline=None)
@given(
    lead=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    trail=st.lists(st.integers(1, 3), max_size=2),
    poison=st.sampled_from([None, "nan", "inf"]),
)
def test_every_observation_is_accepted_or_rejected_with_a_named_problem(lead, trail, poison):
    ctrl = AdaptiveController(num_timesteps=50, num_bins=5, batch_size=2, warmup_steps=2, refit_every=1)
    p = ctrl.plan()
    f = torch.randn(*lead, *trail)
    if poison and f.numel():
        f.view(-1)[0] = float(poison)
    try:
        ctrl.observe(p, f)
    except CarvError as e:
        assert "contributions" in str(e) and str((p.N, p.K)) in str(e)
        return
    ctrl.step()
    assert lead == (p.N, p.K)


def test_a_probe_timer_running_on_steps_without_a_probe_does_not_dilute_the_probe_cost():
    """The mean cost of a probe (which stretches the probe floor, docs/theory.md §13.6) counts the steps that
    passed a probe, not every step whose probe stage took time (a timer around a skipped probe reports a little),
    and leaves out the first probe, whose one-time costs would hold the schedule back for long."""
    kw = dict(num_timesteps=T, num_bins=BINS, batch_size=2, K=4, warmup_steps=100, seed=3, space="parameter")
    ctrl = AdaptiveController(**kw)
    wl = _workload(ctrl)
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        plan = ctrl.plan()
        f = wl.contributions(plan, g)
        wf = plan.weights_like(f) * f
        probe = (wf[:, 0::2].mean(1), wf[:, 1::2].mean(1)) if step % 4 == 0 else None
        cost = (0.5 if step == 0 else 0.03) if probe else 1e-4
        ctrl.observe(plan, f, costs={**wl.costs(plan), "probe": cost}, probe=probe)
        ctrl.step()
    # With every step counted a measuring one, the mean would be about 0.03 / 4; with the first, about 0.05.
    assert ctrl.costs.compute().probe_step == pytest.approx(0.03, rel=1e-9)


def test_each_refit_sets_the_precision_reference_the_next_steps_are_weighted_by():
    """docs/theory.md §7.10: after a refit in proxy space the output-space tracker weighs the next steps by the
    decision's sigma_B^2 and the chosen policy's predicted within variance; the unused probe tracker keeps none."""
    ctrl = AdaptiveController(num_timesteps=T, num_bins=BINS, batch_size=4, warmup_steps=8, refit_every=4, seed=2)
    wl = _workload(ctrl)
    _run(ctrl, wl, 16, torch.Generator().manual_seed(4))
    last = ctrl.history[-1]
    assert last.space == "proxy"
    b = max(last.sigma_b2, 0.0)  # i.i.d. outer draws: no design pool, so the design's reference is sigma_B^2 too
    assert ctrl.grouped._ref == (b, last.predicted_sigma_w2, b)
    assert ctrl.param_grouped._ref is None
    assert ctrl.grouped.scalars()["prec_w"] > 0
