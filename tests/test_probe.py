"""The split-half probe: batched VJPs equal the loop, the random pair split keeps the halves' sums."""

import torch

from carv_adapt.probe import split_half_halves, split_half_probe


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
