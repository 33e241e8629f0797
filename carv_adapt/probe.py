"""The parameter-space split-half probe (docs/theory.md §7.5): between/within in the space of the final gradient."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from carv_adapt.errors import ShapeError

__all__ = ["split_half_probe", "split_half_halves", "per_draw_probe", "flat_gradient"]


def split_half_halves(weighted: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The two half-means of each outer draw's ``K`` contributions: even and odd inner indices, or, with a
    ``generator`` and an even ``K``, one member of each adjacent pair ``(2j, 2j+1)`` chosen at random for half A.

    Under per-draw stratification with even ``K`` the even stratum always lies just below its odd partner, so the
    fixed split's half means differ by ``h'/K``; a random choice per pair cuts that excess in the within estimate
    from ``O(1/K)`` to ``O(1/K^2)``. For odd ``K`` the fixed interleave is already centred and is kept
    (docs/theory.md §7.5). ``weighted`` is ``N x K x ...``; returns two ``N x ...`` Tensors.
    """
    N, K = weighted.shape[0], weighted.shape[1]
    idx = _half_order(N, K, generator).to(weighted.device)
    gather = idx.reshape(N, K, *([1] * (weighted.dim() - 2))).expand_as(weighted)
    ordered = torch.gather(weighted, 1, gather)
    return ordered[:, 0::2].mean(dim=1), ordered[:, 1::2].mean(dim=1)


def _half_order(N: int, K: int, generator: torch.Generator | None) -> Tensor:
    """``N x K`` inner indices whose even positions form half A (:func:`split_half_halves`)."""
    idx = torch.arange(K).repeat(N, 1)
    pairs = K // 2
    if generator is not None and pairs > 0 and K % 2 == 0:
        swap = torch.rand(N, pairs, generator=generator) < 0.5
        even, odd = idx[:, 0 : 2 * pairs : 2].clone(), idx[:, 1 : 2 * pairs : 2].clone()
        idx[:, 0 : 2 * pairs : 2] = torch.where(swap, odd, even)
        idx[:, 1 : 2 * pairs : 2] = torch.where(swap, even, odd)
    return idx


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


def per_draw_probe(
    outputs: Tensor,
    params: Sequence[Tensor],
    contributions: Tensor,
    rho: Tensor,
    generator: torch.Generator | None = None,
    rows_per_backward: int = 64,
) -> tuple[Tensor, Tensor, Tensor]:
    """The split-half probe from per-draw parameter gradients, plus each draw's parameter-space squared norm.

    Every draw's VJP ``h_nk = J_n^T f_nk`` (``f`` rho-free) is taken, ``rows_per_backward`` at a time in one
    vectorized backward; the halves are then ``rho``-weighted means of those rows, equal to
    :func:`split_half_probe`'s for the same ``generator`` (the VJP is linear). ``N K`` VJPs instead of ``2 N``: the
    price of ``||h_nk||^2``, which calibrates the output-space timestep profile to the parameter space when the two
    differ in shape (docs/theory.md §7.9). Pass the triple as ``controller.observe(plan, f, probe=...)``.

    Args:
        outputs: ``N x ...`` upstream outputs, still attached to the graph that produced them from ``params``.
        contributions: ``N x K x ...`` rho-free contributions ``f``; ``rho``: their ``N x K`` weights.

    Returns:
        ``(g_A, g_B, sq_norms)``: two ``N x P`` half-mean gradients and the ``N x K`` ``||h_nk||^2``.
    """
    N, K = contributions.shape[0], contributions.shape[1]
    if K < 2:
        raise ShapeError(f"per-draw probe needs K >= 2 inner draws, got K={K}")
    if outputs.shape[0] != N or tuple(outputs.shape[1:]) != tuple(contributions.shape[2:]):
        raise ShapeError(f"outputs {tuple(outputs.shape)} do not match contributions {tuple(contributions.shape)}")
    if tuple(rho.shape) != (N, K):
        raise ShapeError(f"rho: shape {tuple(rho.shape)}, expected N x K = {(N, K)}")
    if rows_per_backward < 1:
        raise ValueError(f"rows_per_backward must be >= 1, got {rows_per_backward}")
    params = list(params)
    order = _half_order(N, K, generator)
    P = sum(p.numel() for p in params)
    ref = params[0] if params else outputs
    halves = torch.zeros((2, N, P), dtype=ref.dtype, device=ref.device)
    sq = torch.empty((N, K), dtype=torch.float64, device=ref.device)
    k_a, k_b = (K + 1) // 2, K // 2
    in_a = torch.zeros((N, K), dtype=torch.bool)
    in_a.scatter_(1, order[:, 0::2], True)
    flat_n = torch.arange(N).repeat_interleave(K)
    flat_k = torch.arange(K).repeat(N)
    for start in range(0, N * K, rows_per_backward):
        n_idx, k_idx = flat_n[start : start + rows_per_backward], flat_k[start : start + rows_per_backward]
        R = n_idx.numel()
        cot = torch.zeros((R, *outputs.shape), dtype=outputs.dtype, device=outputs.device)
        cot[torch.arange(R), n_idx] = contributions.detach()[n_idx, k_idx].to(outputs.dtype)
        h = _vjp_rows(outputs, params, cot)
        sq[n_idx, k_idx] = h.double().pow(2).sum(dim=1).to(sq.device)
        a = in_a[n_idx, k_idx]
        coef = rho.detach()[n_idx, k_idx].to(h.device, h.dtype) / torch.where(a, k_a, k_b).to(h.device, h.dtype)
        for half, rows in ((0, a), (1, ~a)):
            halves[half].index_add_(0, n_idx[rows].to(h.device), h[rows.to(h.device)] * coef[rows.to(h.device), None])
    return halves[0], halves[1], sq


def _vjp_rows(outputs: Tensor, params: list[Tensor], cot: Tensor) -> Tensor:
    """``R x P`` VJPs of ``outputs`` with the ``R`` cotangents ``cot`` (one vectorized backward, else a loop)."""
    try:
        grads = torch.autograd.grad(
            outputs, params, grad_outputs=cot, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        return torch.cat(
            [(torch.zeros((cot.shape[0], p.numel()), dtype=p.dtype, device=p.device) if g is None
              else g.reshape(cot.shape[0], -1)) for g, p in zip(grads, params)],
            dim=1,
        )  # fmt: skip
    except RuntimeError:  # an op without a batching rule
        rows = [torch.autograd.grad(outputs, params, grad_outputs=c, retain_graph=True, allow_unused=True) for c in cot]
        return torch.stack([_flat(g, params) for g in rows])


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
