"""Decisions on degenerate statistics (zero between variance, one outer draw, empty bins, no costs) and the
memory cap on K."""

import math

import pytest
import torch

from carv_adapt import AdaptiveController, ConfigError
from carv_adapt.allocation import memory_k_max
from tests.helpers import SMALL_CONTROLLER as KW
from tests.helpers import run_with as _run


def test_zero_between_variance_gives_k_max():
    ctrl = AdaptiveController(**KW, batch_size=4, k_max=12, seed=0)
    g = torch.Generator().manual_seed(0)
    _run(ctrl, lambda p: torch.randn(p.N, p.K, 3, generator=g))  # no outer-draw effect at all
    assert ctrl.K == 12 and all(math.isfinite(r.predicted_W) for r in ctrl.history)


def test_single_outer_draw_and_constant_contributions_are_defined():
    ctrl = AdaptiveController(**KW, batch_size=1, seed=0)
    _run(ctrl, lambda p: torch.randn(p.N, p.K, 3))
    assert ctrl.history and "not identified" in ctrl.history[-1].reason
    ctrl2 = AdaptiveController(**KW, batch_size=3, seed=0)
    _run(ctrl2, lambda p: torch.ones(p.N, p.K, 3))  # zero variance everywhere
    # Extra inner draws buy nothing and cost c_in each, so K falls to k_min; every refit's IS gain is defined.
    assert ctrl2.K == 1 and ctrl2.history and all(not math.isnan(r.is_gain) for r in ctrl2.history)


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
