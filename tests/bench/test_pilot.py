"""The pilot statistics and the brute-force oracle, on the synthetic workload with known statistics."""

import math

import pytest
import torch

from carv_adapt.bench.pilot import EstimateCost, brute_force_oracle, run_pilot
from carv_adapt.proposals import BinnedProposal, bin_sums
from carv_adapt.variance import work_normalized_variance
from tests.bench.helpers import BINS
from tests.bench.helpers import synthetic_draws as _draws
from tests.bench.helpers import synthetic_workload as _wl


def test_pilot_statistics_are_unbiased_on_the_synthetic_workload():
    wl = _wl()
    cost = EstimateCost(a=2 * wl.c_out, b=2 * wl.c_in, N=2)
    runs = [run_pilot(_draws(wl, s), wl.target, 64, 6, BINS, cost, seed=s) for s in range(12)]
    for name, exact in (("sigma_b2", wl.sigma_b2), ("sigma_w2", wl.sigma_w2(wl.pi_b)), ("M2", wl.M2)):
        xs = torch.tensor([getattr(r, name) for r in runs])
        se = float(xs.std() / math.sqrt(len(xs)))
        assert abs(float(xs.mean()) - exact) < 4 * se, (name, float(xs.mean()), exact, se)
    m = torch.stack([r.m_b for r in runs])
    se_m = m.std(0) / math.sqrt(len(runs))
    assert bool(((m.mean(0) - wl.m_bins()).abs() < 4 * se_m).all())


def test_brute_force_oracle_is_within_five_percent_of_the_exact_optimum():
    wl = _wl(c_out=0.02, c_in=0.001)
    cost = EstimateCost(a=2 * wl.c_out, b=2 * wl.c_in, N=2)
    pilot = run_pilot(_draws(wl), wl.target, 400, 8, BINS, cost, seed=0)
    choice = brute_force_oracle(pilot, k_max=64)
    W_choice = work_normalized_variance(wl.sigma_b2, wl.sigma_w2(choice.p_b), choice.K, wl.c_out, wl.c_in)
    best = wl.oracle(k_max=64)
    assert W_choice <= 1.05 * best.W, (choice.name, choice.K, best.K)
    # The model's own prediction of the chosen W (per estimate, N = 2) is calibrated.
    assert choice.W == pytest.approx(W_choice, rel=0.15)
    # A proposal the pilot prefers is a real improvement over uniform at the same K.
    W_uniform = work_normalized_variance(wl.sigma_b2, wl.sigma_w2(wl.pi_b), choice.K, wl.c_out, wl.c_in)
    assert choice.name == "uniform" or W_choice < W_uniform
    # The chosen bin masses are a proposal: as a BinnedProposal it puts exactly that mass in each bin.
    p_choice = BinnedProposal(wl.target, pilot.edges, choice.p_b).pmf()
    assert torch.allclose(bin_sums(p_choice, pilot.edges), choice.p_b.to(p_choice.dtype), atol=1e-12)
