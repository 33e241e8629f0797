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


def test_a_calibrated_records_replay_has_the_parameter_space_profile():
    """A record whose decision read a profile calibrated to the parameter space (docs/theory.md §7.9) replays that
    profile and the probes' M2: the replay's within variance is ``kappa (S(p) - M2)`` under ``m r``."""
    from dataclasses import replace

    from carv_adapt.fit.closed_form import record_statistics
    from carv_adapt.stats.grouped import BetweenWithin

    wl, rec = synthetic_record()
    st = record_statistics(rec)
    u = torch.linspace(-0.5, 0.5, 10, dtype=torch.float64)
    r = torch.exp(1.5 * u)  # log-linear: the smooth model returns it exactly
    m = st.m * r
    M2 = 0.9 * float(m.min())  # M2 = |G|^2 + sigma_B^2 per draw: below every bin's second moment
    rec = replace(rec, sigma_b2=0.5)  # and above sigma_B^2 once scaled, as in a real record
    param = BetweenWithin(rec.sigma_b2, 0.0, rec.sigma_w2, 0.0, rec.sigma_w2, float("nan"), 1.0, M2, 1.0)
    cal = replace(st, param=param, ratio=r, ratio_se=0.01 * r, ratio_counts=torch.full((10,), 5.0, dtype=torch.float64))
    rep = synthetic_from_record(replace(rec, statistics=cal.to_dict()), 200)
    uniform, tilted = wl.pi_b, torch.linspace(1, 3, 10, dtype=torch.float64) / 20
    S = [float((wl.pi_b**2 / p * m).sum()) - M2 for p in (uniform, tilted)]
    assert rep.sigma_w2(tilted) / rep.sigma_w2(uniform) == pytest.approx(S[1] / S[0], rel=1e-9)
    plain = synthetic_from_record(rec, 200)  # the output-space record replays another shape
    assert plain.sigma_w2(tilted) / plain.sigma_w2(uniform) != pytest.approx(S[1] / S[0], rel=1e-3)
