"""Replays of a refit record: the record's statistics, and configurations ranked by replayed W."""

import pytest
import torch

from carv_adapt.fit.replay import replay_objective, synthetic_from_record
from tests.helpers import synthetic_record


def test_replay_has_the_records_statistics_and_ranks_configs():
    wl, rec = synthetic_record()
    rep = synthetic_from_record(rec, 200)
    # Same variances (the mean, which no decision reads, is not replayed) under any proposal.
    assert rep.sigma_b2 == pytest.approx(wl.sigma_b2)
    for p in (wl.pi_b, wl.oracle().p, torch.linspace(1, 3, 10, dtype=torch.float64) / 20):
        assert rep.sigma_w2(p) == pytest.approx(wl.sigma_w2(p), rel=1e-9)
    obj = replay_objective(rec, 200, steps=80, seeds=2)
    w_adaptive, se = obj({"num_bins": 10, "k_max": 64})
    w_k1, _ = obj({"num_bins": 10, "k_max": 1, "k_min": 1})
    assert se > 0  # the two seeds replay different draws (se >= 0 holds for any standard error)
    assert w_adaptive < w_k1  # letting K adapt beats K = 1 on this replay
