"""Replications and bootstrap intervals of the ECM."""

import math

import numpy as np
import pytest
import torch

from carv_adapt.bench import Replications, ecm_interval, replicate
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.proposals import UniformProposal
from tests.bench.helpers import synthetic_workload as _wl


def test_replicated_variance_matches_the_exact_variance_within_its_standard_error():
    wl = _wl()
    g = torch.Generator().manual_seed(1)
    pols = {
        "base": HierarchicalEstimator(UniformProposal(wl.target), N=2, K=1, stratification="iid", seed=2),
        "reuse": HierarchicalEstimator(UniformProposal(wl.target), N=2, K=8, stratification="iid", seed=3),
    }
    # "reuse" gets three times the replications (the bench does so for the pair whose ratio it judges).
    reps = replicate(lambda plan: plan.weighted_mean(wl.contributions(plan, g)), pols, R=300, counts={"reuse": 900})
    sw = wl.sigma_w2(wl.pi_b)
    for name, K, R in (("base", 1, 300), ("reuse", 8, 900)):
        exact = wl.sigma_b2 / 2 + sw / (2 * K)
        r = reps[name]
        assert r.R == R and r.K == K and r.seconds_per_estimate > 0
        assert abs(r.variance - exact) < 4 * r.relative_se * exact, (name, r.variance, exact)
    with pytest.raises(ValueError, match="reuse"):
        replicate(lambda plan: plan.weighted_mean(wl.contributions(plan, g)), pols, R=30, counts={"reuse": 2})


def test_ecm_interval_matches_the_delta_method_and_covers_the_exact_ratio():
    rng = np.random.default_rng(0)
    R, d = 120, 8
    b = rng.normal(size=(R, d)) * 2.0  # tr Cov = 32
    p = rng.normal(size=(R, d)) * 1.0  # tr Cov = 8

    def reps(x, sec):
        x = x - x.mean(0)
        return Replications(x @ x.T, np.full(R, sec), 1, 1)

    rb, rp = reps(b, 1.0), reps(p, 2.0)
    exact = (32 * 1.0) / (8 * 2.0)
    e, lo, hi = ecm_interval(rb, rp, confidence=0.9, n_resamples=1000, seed=0)
    assert e == pytest.approx(rb.W / rp.W)
    rse = math.sqrt(rb.relative_se**2 + rp.relative_se**2)
    assert lo < e < hi
    assert 0.5 < (hi - lo) / 2 / (1.645 * rse * e) < 2.0
    assert abs(e - exact) < 4 * rse * e
