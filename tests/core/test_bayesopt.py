"""BoTorch tuning: finds a known optimum of a cheap noisy objective in a few trials; replays are sane."""

import math

import pytest
import torch

pytest.importorskip("botorch")

from carv_adapt.fit.bayesopt import Param, bayes_optimize  # noqa: E402
from carv_adapt.fit.replay import replay_objective, synthetic_from_record  # noqa: E402


def test_bo_finds_known_optimum_within_tolerance():
    # W(x, n) = exp((x - 0.3)^2 * 8 + (n - 7)^2 / 20) * (1 + noise): optimum 1.0 at x = 0.3, n = 7.
    space = [Param("x", 0.0, 1.0), Param("n", 1, 20, integer=True)]
    g = torch.Generator().manual_seed(0)

    def objective(p):
        w = math.exp(8 * (p["x"] - 0.3) ** 2 + (p["n"] - 7) ** 2 / 20)
        return w * (1 + 0.01 * float(torch.randn(1, generator=g))), 0.01 * w

    res = bayes_optimize(objective, space, n_trials=14, n_init=5, seed=0)
    best = res.best
    assert len(res.trials) == 14
    assert abs(best.params["x"] - 0.3) < 0.15 and abs(best.params["n"] - 7) <= 3
    assert best.value < 1.25  # within 25 % of the optimum's W


def test_replay_has_the_records_statistics_and_ranks_configs():
    from tests_core_helpers import synthetic_record

    wl, rec = synthetic_record()
    rep = synthetic_from_record(rec, 200)
    # Same variances (the mean, which no decision reads, is not replayed) under any proposal.
    assert rep.sigma_b2 == pytest.approx(wl.sigma_b2)
    for p in (wl.pi_b, wl.oracle().p, torch.linspace(1, 3, 10, dtype=torch.float64) / 20):
        assert rep.sigma_w2(p) == pytest.approx(wl.sigma_w2(p), rel=1e-9)
    obj = replay_objective(rec, 200, steps=80, seeds=2)
    w_adaptive, se = obj({"num_bins": 10, "k_max": 64})
    w_k1, _ = obj({"num_bins": 10, "k_max": 1, "k_min": 1})
    assert se >= 0 and w_adaptive < w_k1  # letting K adapt beats K = 1 on this replay
