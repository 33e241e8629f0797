"""GroupedVariance (docs/theory.md §7): unbiased between/within on a nested model, and the split-half probe."""

import math

import pytest
import torch

from carv_adapt.stats import GroupedVariance, split_half_within


def _nested(g, N, K, D, sb, sw):
    """x_nk = a_n + b_nk with tr Cov(a) = D sb^2 (between) and tr Cov(b) = D sw^2 (within)."""
    return (
        1.5
        + sb * torch.randn(N, 1, D, generator=g, dtype=torch.float64)
        + sw * torch.randn(N, K, D, generator=g, dtype=torch.float64)
    )


@pytest.mark.slow
@pytest.mark.parametrize("N, K", [(2, 2), (5, 3), (3, 7)])
def test_between_within_unbiased_on_nested_model(N, K):
    g = torch.Generator().manual_seed(10 + N + K)
    D, sb, sw = 6, 0.8, 1.7
    R = 3000
    est_b, est_w = torch.empty(R, dtype=torch.float64), torch.empty(R, dtype=torch.float64)
    for r in range(R):
        gv = GroupedVariance()
        gv.update(_nested(g, N, K, D, sb, sw))
        out = gv.compute()
        est_b[r], est_w[r] = out.sigma_b2, out.sigma_w2
    for est, exact in ((est_b, D * sb**2), (est_w, D * sw**2)):
        z = (est.mean() - exact) / (est.std() / math.sqrt(R))
        assert abs(float(z)) < 4.0, (float(est.mean()), exact)


def test_split_half_probe_unbiased():
    g = torch.Generator().manual_seed(3)
    N, K, P, sw = 4, 5, 10, 0.9
    vals = []
    for _ in range(3000):
        x = sw * torch.randn(N, K, P, generator=g, dtype=torch.float64)
        vals.append(split_half_within(x[:, 0::2].mean(1), x[:, 1::2].mean(1), K))
    v = torch.tensor(vals)
    z = (v.mean() - P * sw**2) / (v.std() / math.sqrt(len(vals)))
    assert abs(float(z)) < 4.0


def test_probe_tracker_matches_known_between_within():
    g = torch.Generator().manual_seed(4)
    N, K, P, sb, sw = 6, 4, 5, 1.1, 0.7
    gv = GroupedVariance()
    for _ in range(3000):
        x = _nested(g, N, K, P, sb, sw)
        gv.update_split_half(x[:, 0::2].mean(1), x[:, 1::2].mean(1), K)
    out = gv.compute()
    # 3000 steps x 6 groups: relative SE of a variance estimate ~ sqrt(2 / (P * dof)) < 1.5 %.
    assert out.sigma_w2 == pytest.approx(P * sw**2, rel=0.06)
    assert out.sigma_b2 == pytest.approx(P * sb**2, rel=0.06)


def test_signal_g2_is_unbiased_from_cross_draw_products():
    """|G|^2 from products of different outer draws' gradients: exact answer D mu0^2 on the nested model."""
    g = torch.Generator().manual_seed(3)
    D, N, K, mu0, sb = 6, 4, 4, 0.7, 0.5
    gv = GroupedVariance()
    for _ in range(2000):
        xi = mu0 + sb * torch.randn(N, 1, D, generator=g, dtype=torch.float64)
        gv.update(xi + 2.0 * torch.randn(N, K, D, generator=g, dtype=torch.float64))
    est = gv.compute()
    assert abs(est.G2 - D * mu0**2) < 4 * est.G2_se and est.G2_se < 0.05 * D * mu0**2


def test_one_outer_draw_per_step_identifies_between_from_successive_steps():
    """N = 1: ||g_t - g_{t-1}||^2 / 2 less the group-mean variances estimates sigma_B^2 without bias on a
    stationary problem, and the state (the last step's mean) round-trips."""
    g = torch.Generator().manual_seed(4)
    D, K, sb = 5, 3, 0.8
    gv = GroupedVariance()
    for i in range(3000):
        xi = 0.3 + sb * torch.randn(1, 1, D, generator=g, dtype=torch.float64)
        gv.update(xi + torch.randn(1, K, D, generator=g, dtype=torch.float64))
        if i == 1500:
            back = GroupedVariance()
            back.load_state_dict(gv.state_dict())
            assert back.compute() == gv.compute() and torch.equal(back._prev[0], gv._prev[0])
    est = gv.compute()
    assert abs(est.sigma_b2 - D * sb**2) < 4 * est.sigma_b2_se
    assert abs(est.G2 - D * 0.09) < 4 * est.G2_se
