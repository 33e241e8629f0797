"""``torch.distributed`` support: one fused all-reduce of every sufficient statistic at refit time (docs/theory.md §8).

Each rank keeps its own sums (its own observations, with the same forgetting); at a refit the controller
sums them over ranks in a single collective, so every rank decides from the statistics of the union of all
observations and plans identically, while drawing its own timesteps and noise from its own stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from carv_adapt.stats.base import SumStatistic

__all__ = ["is_distributed", "world_size", "reduced_copies", "derive_seed"]


def derive_seed(seed: int, rank: int = 0) -> int:
    """A 63-bit stream seed for ``(seed, rank)``: every rank gets its own, reproducible stream."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint64)[0]) >> 1


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def current_rank() -> int:
    """This process's rank under an initialized ``torch.distributed``, else 0."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size(group: Any = None) -> int:
    return torch.distributed.get_world_size(group) if is_distributed() else 1


def reduced_copies(stats: Sequence[SumStatistic], group: Any = None) -> list[SumStatistic]:
    """Copies of ``stats`` holding the sum over all ranks, from one all-reduce on one flat float64 tensor.

    The local statistics are left untouched (reducing them in place would count other ranks' sums again
    at the next refit). Without an initialized process group there is nothing to add: the inputs come back with
    their deferred observations folded in (:meth:`~carv_adapt.stats.base.SumStatistic.folded`: themselves when
    nothing is deferred), so that a decision's many reads fold them once, not once per read.
    """
    import copy

    if world_size(group) == 1:
        return [s.folded() for s in stats]
    copies = [copy.deepcopy(s.folded()) for s in stats]  # deferred observations are in the sums to reduce
    flats = [s.flat() for s in copies]
    buf = torch.cat(flats)
    backend = torch.distributed.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    buf = buf.to(device)
    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM, group=group)
    buf = buf.cpu()
    pos = 0
    for s, f in zip(copies, flats):
        s.load_flat(buf[pos : pos + f.numel()])
        pos += f.numel()
    return copies
