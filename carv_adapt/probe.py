"""The parameter-space split-half probe (SPEC §7): between/within in the space of the final gradient."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from carv_adapt.errors import ShapeError

__all__ = ["split_half_probe"]


def split_half_probe(outputs: Tensor, params: Sequence[Tensor], weighted: Tensor) -> tuple[Tensor, Tensor]:
    """Per-outer-draw parameter gradients of the two interleaved halves of the inner contributions.

    Args:
        outputs: ``N x ...`` upstream outputs, still attached to the graph that produced them from ``params``.
        params: the parameters whose gradient the pipeline consumes.
        weighted: ``N x K x ...`` weighted contributions ``rho f`` (``K >= 2``), the output-space gradient.

    Returns:
        ``(g_A, g_B)``, each ``N x P`` (``P`` = total parameter count): the vector-Jacobian products of output
        ``n`` with the mean of its even- and odd-indexed contributions. Costs ``2 N`` extra VJPs; pass the
        pair to ``controller.observe(plan, ..., probe=(g_A, g_B))`` every few steps.
    """
    N, K = weighted.shape[0], weighted.shape[1]
    if K < 2:
        raise ShapeError(f"split-half probe needs K >= 2 inner draws, got K={K}")
    if outputs.shape[0] != N or tuple(outputs.shape[1:]) != tuple(weighted.shape[2:]):
        raise ShapeError(f"outputs {tuple(outputs.shape)} do not match weighted contributions {tuple(weighted.shape)}")
    halves = (weighted[:, 0::2].mean(dim=1), weighted[:, 1::2].mean(dim=1))
    params = list(params)
    rows: tuple[list[Tensor], list[Tensor]] = ([], [])
    for n in range(N):
        for h, out in zip(halves, rows):
            grads = torch.autograd.grad(
                outputs[n], params, grad_outputs=h[n].to(outputs.dtype), retain_graph=True, allow_unused=True
            )
            flat = [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]
            out.append(torch.cat(flat))
    return torch.stack(rows[0]), torch.stack(rows[1])
