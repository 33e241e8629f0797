"""Degenerate statistics, the memory cap, logging, and property-based checks of configs and observe()."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from carv_adapt import AdaptiveController, CarvError, ConfigError
from carv_adapt.allocation import memory_k_max
from carv_adapt.integrations import RefitLogger

KW = dict(num_timesteps=100, num_bins=10, warmup_steps=4, refit_every=2)


def _run(ctrl, make_f, steps=10, costs=True):
    for _ in range(steps):
        p = ctrl.plan()
        ctrl.observe(p, make_f(p), costs={"upstream": 0.01 * p.N, "teacher": 0.001 * p.N * p.K} if costs else None)
        ctrl.step()


def test_zero_between_variance_gives_k_max():
    ctrl = AdaptiveController(**KW, batch_size=4, k_max=12, seed=0)
    g = torch.Generator().manual_seed(0)
    _run(ctrl, lambda p: torch.randn(p.N, p.K, 3, generator=g), steps=60)  # no outer-draw effect at all
    # K climbs as far as the evidence allows at each refit and reaches the cap once sigma_B^2 is bounded near 0.
    ks = [r.K for r in ctrl.history]
    assert ks == sorted(ks) and ctrl.K == 12 and all(math.isfinite(r.predicted_W) for r in ctrl.history)


def test_single_outer_draw_and_constant_contributions_are_defined():
    ctrl = AdaptiveController(**KW, batch_size=1, seed=0)
    _run(ctrl, lambda p: torch.randn(p.N, p.K, 3))
    assert ctrl.history and "not identified" in ctrl.history[-1].reason
    ctrl2 = AdaptiveController(**KW, batch_size=3, seed=0)
    _run(ctrl2, lambda p: torch.ones(p.N, p.K, 3))  # zero variance everywhere
    assert ctrl2.K >= 1 and all(not math.isnan(r.is_gain) for r in ctrl2.history)


def test_empty_bins_and_no_costs_are_defined():
    ctrl = AdaptiveController(**KW, batch_size=2, seed=0, t_min=0, t_max=99)
    _run(ctrl, lambda p: torch.randn(p.N, p.K, 2) * (p.t[..., None] < 30), costs=False)
    last = ctrl.history[-1]
    assert "no cost observations" in last.reason
    assert all(v > 0 for v in last.proposal)  # no bin is starved


def test_memory_cap_bounds_k():
    assert memory_k_max(1000, 10, 4, 64) == 25
    assert memory_k_max(10, 100, 4, 64) == 1
    ctrl = AdaptiveController(**KW, batch_size=4, k_max=64, memory_cap_bytes=4 * 5 * 100, inner_bytes=100, seed=1)
    g = torch.Generator().manual_seed(0)
    _run(ctrl, lambda p: torch.randn(p.N, p.K, 3, generator=g))
    assert ctrl.K <= 5 and "capped" in ctrl.history[-1].reason
    with pytest.raises(ConfigError, match="inner_bytes"):
        AdaptiveController(memory_cap_bytes=100)


def test_refit_logger_writes_scalars_and_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    seen = []
    ctrl = AdaptiveController(**KW, batch_size=3, logger=RefitLogger(lambda tag, v, s: seen.append((tag, s))))
    g = torch.Generator().manual_seed(0)
    _run(ctrl, lambda p: torch.randn(p.N, p.K, 3, generator=g))
    assert ("carv/K", ctrl.history[0].step) in seen and ("carv/predicted_ecm", ctrl.history[-1].step) in seen
    with SummaryWriter(tmp_path) as w:
        ctrl2 = AdaptiveController(**KW, batch_size=3, logger=RefitLogger(w))
        _run(ctrl2, lambda p: torch.randn(p.N, p.K, 3, generator=g))
    assert any(f.name.startswith("events.out.tfevents") and f.stat().st_size > 0 for f in tmp_path.iterdir())


CONFIG_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "num_timesteps": st.integers(-5, 2000),
        "t_min": st.integers(-5, 1000),
        "num_bins": st.integers(-2, 1200),
        "k_min": st.integers(-2, 10),
        "k_max": st.integers(-2, 100),
        "alpha": st.one_of(st.floats(-1, 2), st.just(float("nan"))),
        "batch_size": st.integers(-1, 8),
        "stratification": st.sampled_from(["iid", "global", "bogus", ""]),
        "forgetting": st.floats(-0.5, 1.5),
        "warmup_k": st.lists(st.integers(-1, 5), max_size=3).map(tuple),
        "budget": st.one_of(st.none(), st.floats(-1, 10)),
        "allocation": st.sampled_from(["fixed_batch", "fixed_budget"]),
    },
)


@settings(max_examples=150, deadline=None)
@given(CONFIG_FIELDS)
def test_every_config_is_accepted_or_rejected_with_a_named_field(cfg):
    try:
        AdaptiveController(**cfg)
    except ConfigError as e:
        items = str(e).removeprefix("invalid ControllerConfig: ").split("; ")
        for item in items:
            field, _, message = item.partition("=")
            if field in cfg:
                continue  # a field-level error, named as the caller spelled it
            # A cross-field rule (loc is the block): its message must name a setting the caller passed.
            assert any(name in message for name in cfg if name not in ("allocation",)) or "budget" in message, item


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


def test_one_percent_nonfinite_rate_leaves_statistics_identical_and_warns_once():
    import warnings

    from carv_adapt.proposals import TargetMeasure
    from carv_adapt.stats import GroupedVariance, TimestepProfile

    edges = TargetMeasure(100).bin_edges(10)
    clean_g, dirty_g = GroupedVariance(), GroupedVariance()
    clean_p, dirty_p = TimestepProfile(edges), TimestepProfile(edges)
    g = torch.Generator().manual_seed(0)
    dropped = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(100):
            x = torch.randn(10, 4, 3, generator=g)
            t = torch.randint(0, 100, (10, 4), generator=g)
            bad = torch.rand(10, generator=g) < 0.01  # ~1 % of outer draws poisoned
            dirty = x.clone()
            dirty[bad, 0, 0] = float("nan")
            dropped += int(bad.sum())
            dirty_g.update(dirty)
            dirty_p.update(t, dirty.pow(2).sum(-1))
            keep = ~bad
            clean_g.update(x[keep])  # a poisoned outer draw leaves the grouped statistics whole
            entry_ok = torch.ones(10, 4, dtype=torch.bool)
            entry_ok[bad, 0] = False  # the profile drops just the poisoned squared norm
            clean_p.update(t[entry_ok], x.pow(2).sum(-1)[entry_ok])
    assert dropped > 0
    assert int(dirty_g.num_nonfinite) == dropped and int(dirty_p.num_nonfinite) == dropped
    assert sum(issubclass(w.category, RuntimeWarning) for w in caught) == 2
    for a, b in ((clean_g, dirty_g), (clean_p, dirty_p)):
        for name in a.state_names:
            if name != "num_nonfinite":
                assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=0), name
