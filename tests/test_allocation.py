"""docs/theory.md §4-§5: the optimal K and budget allocation against brute force."""

import math

import pytest

from carv_adapt.allocation import k_star_continuous, optimal_allocation, optimal_k
from carv_adapt.errors import ConfigError
from carv_adapt.variance import estimator_variance, work_normalized_variance

CASES = [
    # sigma_b2, sigma_w2, c_out, c_in
    (1.0, 1.0, 1.0, 1.0),
    (1.0, 30.0, 59.0, 1.0),
    (0.3, 12.0, 17.0, 1.3),
    (5.0, 0.2, 3.0, 2.0),
    (1e-3, 10.0, 100.0, 0.5),
    (2.0, 9.0, 0.0, 1.0),
    (2.0, 9.0, 1.0, 0.0),
]


@pytest.mark.parametrize("sb, sw, c_out, c_in", CASES)
@pytest.mark.parametrize("k_min, k_max", [(1, 64), (2, 5), (1, 1), (3, 200)])
def test_optimal_k_matches_brute_force_fixed_batch(sb, sw, c_out, c_in, k_min, k_max):
    k = optimal_k(sb, sw, c_out, c_in, k_min, k_max)
    W = [work_normalized_variance(sb, sw, K, c_out, c_in) for K in range(k_min, k_max + 1)]
    assert W[k - k_min] == pytest.approx(min(W), rel=1e-12)


def test_k_star_closed_form_and_W_at_optimum():
    sb, sw, c_out, c_in = 0.7, 11.0, 40.0, 1.5
    k = k_star_continuous(sb, sw, c_out, c_in)
    assert k == pytest.approx(math.sqrt(sw / sb * c_out / c_in))
    assert work_normalized_variance(sb, sw, k, c_out, c_in) == pytest.approx(
        (math.sqrt(sb * c_out) + math.sqrt(sw * c_in)) ** 2
    )


def test_nonpositive_between_gives_k_max():
    assert optimal_k(0.0, 3.0, 1.0, 1.0, 1, 17) == 17
    assert optimal_k(-0.5, 3.0, 1.0, 1.0, 1, 9) == 9


@pytest.mark.parametrize("sb, sw, c_out, c_in", CASES[:5])
@pytest.mark.parametrize("budget, c_0", [(200.0, 0.0), (57.0, 3.0), (1000.0, 10.0)])
def test_budget_allocation_matches_brute_force(sb, sw, c_out, c_in, budget, c_0):
    a = optimal_allocation(sb, sw, c_out, c_in, mode="fixed_budget", budget=budget, c_0=c_0, k_min=1, k_max=40)
    best = math.inf
    for K in range(1, 41):
        N = max(1, math.floor((budget - c_0) / (c_out + K * c_in)))
        best = min(best, estimator_variance(sb, sw, N, K))
    assert a.variance == pytest.approx(best, rel=1e-12)
    assert a.N == max(1, math.floor((budget - c_0) / (c_out + a.K * c_in)))


def test_per_k_within_variance_is_searched_directly():
    # Stratification: sigma_w2 falls with K; the argmin must use the per-K values.
    sw = [10.0 / K**1.5 for K in range(1, 33)]
    k = optimal_k(1.0, sw, 5.0, 1.0, 1, 32)
    W = [work_normalized_variance(1.0, sw[K - 1], K, 5.0, 1.0) for K in range(1, 33)]
    assert k == 1 + min(range(32), key=W.__getitem__)


def test_bad_bounds_and_costs_raise_naming_the_value():
    with pytest.raises(ConfigError, match="k_min must be >= 1, got 0"):
        optimal_k(1.0, 1.0, 1.0, 1.0, 0, 4)
    with pytest.raises(ConfigError, match="k_max"):
        optimal_k(1.0, 1.0, 1.0, 1.0, 5, 4)
    with pytest.raises(ConfigError, match="c_out must be a finite number >= 0, got -1.0"):
        work_normalized_variance(1.0, 1.0, 2, -1.0, 1.0)
