"""The parameter-space split-half probe (docs/theory.md §7.5): between/within in the space of the final gradient."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from carv_adapt.errors import ShapeError

__all__ = ["split_half_probe", "split_half_halves", "flat_gradient"]


def split_half_halves(weighted: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The two half-means of each outer draw's ``K`` contributions: even and odd inner indices, or, with a
    ``generator`` and an even ``K``, one member of each adjacent pair ``(2j, 2j+1)`` chosen at random for half A.

    Under per-draw stratification with even ``K`` the even stratum always lies just below its odd partner, so the
    fixed split's half means differ by ``h'/K``; a random choice per pair cuts that excess in the within estimate
    from ``O(1/K)`` to ``O(1/K^2)``. For odd ``K`` the fixed interleave is already centred and is kept
    (docs/theory.md §7.5). ``weighted`` is ``N x K x ...``; returns two ``N x ...`` Tensors.
    """
    N, K = weighted.shape[0], weighted.shape[1]
    idx = torch.arange(K).repeat(N, 1)
    pairs = K // 2
    if generator is not None and pairs > 0 and K % 2 == 0:
        swap = torch.rand(N, pairs, generator=generator) < 0.5
        even, odd = idx[:, 0 : 2 * pairs : 2].clone(), idx[:, 1 : 2 * pairs : 2].clone()
        idx[:, 0 : 2 * pairs : 2] = torch.where(swap, odd, even)
        idx[:, 1 : 2 * pairs : 2] = torch.where(swap, even, odd)
    idx = idx.to(weighted.device)
    gather = idx.reshape(N, K, *([1] * (weighted.dim() - 2))).expand_as(weighted)
    ordered = torch.gather(weighted, 1, gather)
    return ordered[:, 0::2].mean(dim=1), ordered[:, 1::2].mean(dim=1)


def split_half_probe(
    outputs: Tensor,
    params: Sequence[Tensor],
    weighted: Tensor,
    generator: torch.Generator | None = None,
    batched: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-outer-draw parameter gradients of the two interleaved halves of the inner contributions.

    Args:
        outputs: ``N x ...`` upstream outputs, still attached to the graph that produced them from ``params``.
        params: the parameters whose gradient the pipeline consumes.
        weighted: ``N x K x ...`` weighted contributions ``rho f`` (``K >= 2``), the output-space gradient.

    Returns:
        ``(g_A, g_B)``, each ``N x P`` (``P`` = total parameter count): the vector-Jacobian products of output
        ``n`` with the mean of its even- and odd-indexed contributions (with ``generator``: a random member of
        each adjacent pair in each half, see :func:`split_half_halves`; use it under stratification). Costs
        ``2 N`` extra VJPs, batched into one vectorized backward (``batched=True``; falls back to a loop for ops
        without a batching rule); pass the pair to ``controller.observe(plan, ..., probe=(g_A, g_B))`` when
        :meth:`~carv_adapt.controller.AdaptiveController.probe_due` says so.
    """
    N, K = weighted.shape[0], weighted.shape[1]
    if K < 2:
        raise ShapeError(f"split-half probe needs K >= 2 inner draws, got K={K}")
    if outputs.shape[0] != N or tuple(outputs.shape[1:]) != tuple(weighted.shape[2:]):
        raise ShapeError(f"outputs {tuple(outputs.shape)} do not match weighted contributions {tuple(weighted.shape)}")
    halves = split_half_halves(weighted, generator)
    params = list(params)
    if batched:
        try:
            return _batched_vjps(outputs, params, halves)
        except RuntimeError:  # an op without a batching rule: one VJP at a time
            pass
    rows: tuple[list[Tensor], list[Tensor]] = ([], [])
    for n in range(N):
        for h, out in zip(halves, rows):
            grads = torch.autograd.grad(
                outputs[n], params, grad_outputs=h[n].to(outputs.dtype), retain_graph=True, allow_unused=True
            )
            out.append(_flat(grads, params))
    return torch.stack(rows[0]), torch.stack(rows[1])


def flat_gradient(params: Sequence[Tensor]) -> Tensor:
    """The parameters' ``.grad`` flattened into one vector in ``params``' order (zeros where a gradient is None): the
    step gradient :meth:`~carv_adapt.controller.AdaptiveController.observe` takes as ``grad=`` (docs/theory.md §7.8),
    in the same order as :func:`split_half_probe`'s rows."""
    return _flat([p.grad for p in params], params)


def _flat(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def _batched_vjps(outputs: Tensor, params: list[Tensor], halves: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """All ``2N`` VJPs in one vectorized backward (``is_grads_batched``): row ``(h, n)`` of the batched
    cotangent is half ``h``'s mean for output ``n`` and zero elsewhere."""
    N = outputs.shape[0]
    cot = torch.zeros((2, N, *outputs.shape), dtype=outputs.dtype, device=outputs.device)
    idx = torch.arange(N, device=outputs.device)
    for h, half in enumerate(halves):
        cot[h, idx, idx] = half.to(outputs.dtype)
    grads = torch.autograd.grad(
        outputs, params, grad_outputs=cot.reshape(2 * N, *outputs.shape), retain_graph=True, allow_unused=True,
        is_grads_batched=True,
    )  # fmt: skip
    flat = torch.cat(
        [(torch.zeros((2 * N, p.numel()), dtype=p.dtype, device=p.device) if g is None else g.reshape(2 * N, -1))
         for g, p in zip(grads, params)],
        dim=1,
    )  # fmt: skip
    return flat[:N], flat[N:]
