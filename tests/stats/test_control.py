"""ControlVariateStats (docs/theory.md §14): merge equals a joint update, state round-trips, forgetting, the
coefficient is the trace-optimal one."""

import torch

from carv_adapt.control import controlled_integrand, cv_beta
from carv_adapt.stats.control import ControlVariateStats

EDGES = torch.tensor([0, 10, 20, 30])


def _step(g, N=3, K=4, D=5, a=0.8):
    bins = torch.randint(0, 3, (N, K), generator=g)
    h = torch.randn(N, K, D, generator=g, dtype=torch.float64)
    mu = torch.randn(N, K, D, generator=g, dtype=torch.float64)
    f = mu + a * h + 0.3 * torch.randn(N, K, D, generator=g, dtype=torch.float64)
    return bins, f, mu + h, mu


def test_merge_equals_joint_update_and_state_round_trips():
    g = torch.Generator().manual_seed(0)
    steps = [_step(g) for _ in range(6)]
    joint, a, b = (ControlVariateStats(EDGES) for _ in range(3))
    for i, (bins, f, sg, mu) in enumerate(steps):
        joint.apply(bins, None, f, sg, mu)
        (a if i % 2 else b).apply(bins, None, f, sg, mu)
    a.merge(b)
    for name in joint.state_names:
        assert torch.allclose(getattr(a, name), getattr(joint, name), rtol=1e-12)
    c = ControlVariateStats(EDGES)
    c.load_state_dict(joint.state_dict())
    assert torch.equal(c.beta(), joint.beta())
    c.load_flat(joint.flat())
    assert torch.equal(c.s_fh, joint.s_fh)


def test_coefficient_converges_to_the_trace_optimal_one_and_removes_its_share():
    """f = mu + a h + noise: beta -> a; the variance removed per draw -> a^2 E||h||^2."""
    g = torch.Generator().manual_seed(1)
    s = ControlVariateStats(EDGES)
    for _ in range(400):
        bins, f, sg, mu = _step(g, a=0.8)
        s.apply(bins, None, f, sg, mu)
    est = s.compute()
    assert torch.allclose(est.beta, torch.full((3,), 0.8, dtype=torch.float64), atol=0.02)
    assert torch.allclose(est.removed, torch.full((3,), 0.64 * 5, dtype=torch.float64), rtol=0.05)
    # rho^2 = a^2 / (a^2 + 0.3^2) of ||f - mu||^2
    assert torch.allclose(est.correlation**2, torch.full((3,), 0.64 / (0.64 + 0.09), dtype=torch.float64), atol=0.02)


def test_forgetting_scales_every_sum_and_keeps_beta():
    g = torch.Generator().manual_seed(2)
    s = ControlVariateStats(EDGES)
    bins, f, sg, mu = _step(g)
    s.apply(bins, None, f, sg, mu)
    before = s.beta().clone()
    s.decay(0.5)
    assert torch.allclose(s.beta(), before)
    assert float(s.count.sum()) == 6.0  # 12 draws, halved


def test_controlled_integrand_uses_the_plan_coefficients_and_zero_without_them():
    g = torch.Generator().manual_seed(3)
    _, f, sg, mu = _step(g)
    beta = torch.full((3, 4), 0.5, dtype=torch.float64)
    out, finite = controlled_integrand(f, sg, mu, beta)
    assert torch.allclose(out, f - 0.5 * (sg - mu)) and bool(finite.all())
    assert torch.equal(controlled_integrand(f, sg, mu, None)[0], f)
    assert torch.equal(cv_beta(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])), torch.tensor([0.0, 0.5]))


def test_coefficient_shrinkage_fades_with_evidence():
    """STYLE rule 5: a coefficient from one draw is 0; from a few noisy draws it is shrunk below the raw ratio; the
    factor tends to 1 as draws accumulate; a surrogate equal to f is never shrunk."""
    from carv_adapt.control import cv_beta

    g = torch.Generator().manual_seed(4)
    s = ControlVariateStats(torch.tensor([0, 10]))
    bins, f, sg, mu = _step(g, N=1, K=1, a=0.3)
    s.apply(torch.zeros(1, 1, dtype=torch.long), None, f, sg, mu)
    assert float(s.beta()[0]) == 0.0
    for _ in range(3):
        bins, f, sg, mu = _step(g, N=1, K=2, a=0.3)
        s.apply(torch.zeros(1, 2, dtype=torch.long), None, f, sg, mu)
    raw = float(cv_beta(s.s_fh, s.s_hh)[0])
    assert 0 < float(s.beta()[0]) / raw < 1
    for _ in range(500):
        bins, f, sg, mu = _step(g, N=2, K=4, a=0.3)
        s.apply(torch.zeros(2, 4, dtype=torch.long), None, f, sg, mu)
    assert float(s.beta()[0]) / float(cv_beta(s.s_fh, s.s_hh)[0]) > 0.97
    exact = ControlVariateStats(torch.tensor([0, 10]))
    _, _, sg, mu = _step(g, N=1, K=2)
    exact.apply(torch.zeros(1, 2, dtype=torch.long), None, sg, sg, mu)
    assert float(exact.beta()[0]) == 1.0
