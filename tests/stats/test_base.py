"""SumStatistic, shared by every tracker: merge = joint update, exact state round trip, non-finite observations
dropped and counted."""

import warnings

import pytest
import torch

from carv_adapt.errors import NonFiniteError
from carv_adapt.proposals import TargetMeasure
from carv_adapt.stats import CostTracker, GroupedVariance, TimestepProfile


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
    if isinstance(joint, CostTracker):
        joint._prev = None  # the streams are two ranks': no pair of successive steps spans them
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


def test_states_added_later_start_at_their_default_when_a_checkpoint_lacks_them():
    """Checkpoints saved before a state existed load (the state starts at its default); any other missing state is
    still an error naming it."""
    import pytest

    from carv_adapt.errors import StateError
    from carv_adapt.stats import CostTracker, GroupedVariance

    old = CostTracker().state_dict()
    del old["measured_steps"]
    fresh = CostTracker()
    fresh.load_state_dict(old)
    assert float(fresh.measured_steps) == 0.0
    gv = GroupedVariance().state_dict()
    for name in ("strat_split", "strat_pairs", "dof_bd", "sbd_num", "sbd_sq", "dof_bd2"):
        del gv[name]
    GroupedVariance().load_state_dict(gv)
    del old["steps"]
    with pytest.raises(StateError, match="steps"):
        CostTracker().load_state_dict(old)


def test_states_declared_in_init_are_laid_out_once_and_later_declarations_keep_values():
    from carv_adapt.stats.base import SumStatistic

    class A(SumStatistic):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("a", torch.full((2,), 3.0))

    class B(A):
        def __init__(self) -> None:
            super().__init__()  # A's __init__ runs inside B's: still one layout, when B's returns
            self.add_state("b", torch.zeros(()), decay="none")

    laid = []
    original = SumStatistic._relayout
    SumStatistic._relayout = lambda self, values: (laid.append(len(values)), original(self, values))[1]
    try:
        x = B()
    finally:
        SumStatistic._relayout = original
    assert laid == [3]  # num_nonfinite, a, b: one build
    assert x.state_names == ["num_nonfinite", "a", "b"] and torch.equal(x.a, torch.full((2,), 3.0))
    x.a += 1.0
    x.decay(0.5)  # the states are views of the buffer: forgetting reaches them
    assert torch.equal(x.a, torch.full((2,), 2.0)) and float(x.b) == 0.0
    x.add_state("c", torch.ones(()))  # declared after construction: laid out at once, the others keep their values
    assert torch.equal(x.a, torch.full((2,), 2.0)) and float(x.c) == 1.0
    x.add_state("a", torch.zeros(2))  # re-declared: back to its new default
    assert torch.equal(x.a, torch.zeros(2)) and x.state_names == ["num_nonfinite", "a", "b", "c"]
