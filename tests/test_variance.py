"""theory.md §3: the pure variance model (IS second moment, optimal proposal, ECM, cost fit) against brute force."""

import pytest
import torch

from carv_adapt.variance import (
    ecm,
    fit_linear_cost,
    is_second_moment,
    optimal_proposal_bins,
    split_half_sums,
    within_variance_for_proposal,
)


def test_optimal_proposal_beats_uniform_and_random_family():
    g = torch.Generator().manual_seed(0)
    B = 12
    pi = torch.full((B,), 1.0 / B, dtype=torch.float64)
    m = torch.rand(B, generator=g, dtype=torch.float64) ** 3 * 10 + 0.1
    p_star = optimal_proposal_bins(pi, m)
    s_star = float(is_second_moment(pi, p_star, m))
    assert s_star == pytest.approx(float((pi * m.sqrt()).sum() ** 2))
    assert s_star < float(is_second_moment(pi, pi, m))
    for _ in range(200):
        q = torch.rand(B, generator=g, dtype=torch.float64) + 1e-3
        q = q / q.sum()
        assert s_star <= float(is_second_moment(pi, q, m)) + 1e-12


def test_within_for_proposal_is_exact_in_one_space():
    pi = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    m = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    p0, p1 = pi, torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    M2 = 0.8
    S0, S1 = float(is_second_moment(pi, p0, m)), float(is_second_moment(pi, p1, m))
    assert within_variance_for_proposal(S0 - M2, S0, S1, M2) == pytest.approx(S1 - M2)


def test_ecm_and_cost_fit():
    assert ecm(6.0, 2.0) == 3.0
    # y = 0.3 + 0.02 x exactly
    xs = [4.0, 8.0, 16.0, 4.0, 32.0]
    ys = [0.3 + 0.02 * x for x in xs]
    sums = (len(xs), sum(xs), sum(x * x for x in xs), sum(ys), sum(x * y for x, y in zip(xs, ys)))
    a, b = fit_linear_cost(*sums)
    assert a == pytest.approx(0.3) and b == pytest.approx(0.02)
    a, b = fit_linear_cost(3, 12.0, 48.0, 3.0, 12.0)  # no spread in x: through the origin
    assert a == 0.0 and b == pytest.approx(0.25)


@pytest.mark.parametrize("n,P,K,chunk", [(5, 1000, 5, 64), (1, 37, 2, 8), (3, 10, 4, 1 << 16), (4, 9, 7, 3)])
def test_split_half_sums_match_the_full_size_reductions(n, P, K, chunk):
    g = torch.Generator().manual_seed(n * P + K)
    a, b = torch.randn(n, P, generator=g, dtype=torch.float64), torch.randn(n, P, generator=g, dtype=torch.float64)
    k_a, k_b = (K + 1) // 2, K // 2
    m = (k_a * a + k_b * b) / K
    want = (float(((a - b) ** 2).sum()) / (1 / k_a + 1 / k_b), float((m**2).sum()), float(((m - m.mean(0)) ** 2).sum()))
    got, means = split_half_sums(a, b, K, keep_means=True, chunk_elements=chunk)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(means, m)
    assert split_half_sums(a, b, K, chunk_elements=chunk)[1] is None
