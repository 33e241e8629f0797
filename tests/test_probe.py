"""The split-half probe: batched VJPs equal the loop, the random pair split keeps the halves' sums; the per-draw
probe gives the same pair and every draw's parameter-space norm."""

import pytest
import torch

from carv_adapt.errors import ShapeError
from carv_adapt.probe import per_draw_probe, split_half_halves, split_half_probe


def _graph():
    torch.manual_seed(0)
    scene = torch.randn(16, 16, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    x = torch.stack([torch.tanh(scene * (i + 1)).sum(0) * w.sum() for i in range(4)])  # 4 x 16
    return x, [scene, w]


def test_batched_probe_equals_one_vjp_at_a_time():
    x, params = _graph()
    wf = torch.randn(4, 6, 16)
    a1, b1 = split_half_probe(x, params, wf, batched=False)
    a2, b2 = split_half_probe(x, params, wf, batched=True)
    assert a1.shape == (4, 264) and torch.allclose(a1, a2, atol=1e-6) and torch.allclose(b1, b2, atol=1e-6)


def test_random_pair_split_for_even_k_only():
    w = torch.arange(2 * 6 * 3, dtype=torch.float64).reshape(2, 6, 3)
    a, b = split_half_halves(w)
    a2, b2 = split_half_halves(w, torch.Generator().manual_seed(0))
    assert torch.allclose(a + b, a2 + b2)  # the same draws, one of each pair per half
    assert not (torch.allclose(a, a2) and torch.allclose(b, b2))  # some pairs swapped
    odd = w[:, :5]
    assert all(torch.equal(u, v) for u, v in zip(split_half_halves(odd), split_half_halves(odd, torch.Generator())))


def test_per_draw_probe_gives_the_split_half_pair_and_each_draws_parameter_norm():
    x, params = _graph()
    f, rho = torch.randn(4, 6, 16), torch.rand(4, 6) + 0.5
    a, b, sq = per_draw_probe(x, params, f, rho, torch.Generator().manual_seed(1), rows_per_backward=5)
    a2, b2 = split_half_probe(x, params, rho[..., None] * f, torch.Generator().manual_seed(1))
    assert torch.allclose(a, a2, atol=1e-5) and torch.allclose(b, b2, atol=1e-5)
    for n, k in [(0, 0), (2, 5), (3, 3)]:
        g = torch.autograd.grad(x[n], params, grad_outputs=f[n, k], retain_graph=True)
        assert torch.isclose(sq[n, k], sum((v.double() ** 2).sum() for v in g), rtol=1e-5)
    with pytest.raises(ShapeError, match="rho"):
        per_draw_probe(x, params, f, rho[:, :3])


def test_a_per_draw_probe_of_the_wrong_shape_is_named():
    from carv_adapt import AdaptiveController

    ctrl = AdaptiveController(num_timesteps=100, num_bins=5, batch_size=2, space="parameter", warmup_steps=2)
    plan = ctrl.plan()
    f = torch.randn(plan.N, plan.K, 3)
    g = torch.randn(plan.N, 7)
    with pytest.raises(ShapeError, match="probe sq_norms"):
        ctrl.observe(plan, f, probe=(g, g, torch.ones(plan.N, plan.K + 1)))
    ctrl.observe(plan, f, probe=(g, g, torch.ones(plan.N, plan.K)))
    assert float(ctrl.calibration.count.sum()) == plan.N * plan.K
