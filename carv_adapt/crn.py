"""Common random numbers across items (docs/theory.md §18).

A :class:`CRNGroup` makes every ``items`` consecutive plans of a sampler (the controller or a fixed
:class:`~carv_adapt.estimator.HierarchicalEstimator`) replay one set of draws: the first plan of a group is drawn,
the others are :meth:`Plan.replay` of it, bit-identical in ``t``, ``rho`` and ``noise_seed``. Each item's estimate
keeps its marginal distribution, so it stays unbiased; what changes is the joint distribution across items, so the
controller observes a group once, through :func:`fold_items`, instead of once per item.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError, ShapeError, StateError
from carv_adapt.plan import Plan

__all__ = ["CRNGroup", "fold_items", "plan_state", "plan_from_state"]


def fold_items(contributions: list[Tensor], center: bool = True) -> Tensor:
    """Fold ``M`` items' ``N x K x ...`` contributions drawn at the same ``(t, eps)`` into one ``N x K x (M D)``
    observation (docs/theory.md §18).

    With ``center`` each item's contribution is first centred on the items' mean at the same draw (what a
    comparison of items sees: the shared part cancels); then the items are concatenated along the feature axis and
    scaled by ``1/sqrt(M)``. The folded draw's squared norm is the mean over items of the (centred) squared norms,
    its between and within variances are the means over items of theirs (traces add over concatenated blocks), and
    every shared draw counts once in the statistics' degrees of freedom.
    """
    if not contributions:
        raise ShapeError("fold_items needs at least one item's contributions, got none")
    lead = tuple(contributions[0].shape[:2])
    if any(tuple(c.shape) != tuple(contributions[0].shape) for c in contributions):
        shapes = sorted({tuple(c.shape) for c in contributions})
        raise ShapeError(f"items of one crn group must have equal contribution shapes, got {shapes}")
    f = torch.stack([c.detach().reshape(*lead, -1) for c in contributions])  # M x N x K x D
    if center:
        f = f - f.mean(dim=0, keepdim=True)
    m = f.shape[0]
    return f.permute(1, 2, 0, 3).reshape(*lead, -1) / math.sqrt(m)


def plan_state(plan: Plan) -> dict[str, Any]:
    """A plan as plain data (every field; tensors cloned to the CPU)."""
    return {
        f.name: (v.detach().cpu().clone() if isinstance(v := getattr(plan, f.name), Tensor) else v)
        for f in fields(plan)
    }


def plan_from_state(state: dict[str, Any]) -> Plan:
    """The inverse of :func:`plan_state`."""
    return Plan(**state)


class CRNGroup:
    """Groups of ``items`` consecutive plans that share their draws (docs/theory.md §18).

    Opened by ``AdaptiveController.crn_group(items)`` or ``HierarchicalEstimator.crn_group(items)``; grouping
    stays on, group after group, until :meth:`close` (or the end of a ``with`` block). A group's first plan is
    drawn by the sampler, the next ``items - 1`` replay it; the sampler's own decisions (a refit changing ``K``)
    take effect at the next group.

    Args:
        items: plans per group (``>= 2`` when ``center``).
        center: the controller observes the contributions centred on the items' mean at each shared draw (the
            variance of comparisons between items); ``False``: each item's own variance.
        release: called by :meth:`close` to detach the group from its sampler.
    """

    def __init__(self, items: int, center: bool = True, release: Callable[[], None] | None = None) -> None:
        if not isinstance(items, int) or items < (2 if center else 1):
            raise ConfigError(
                f"crn_group items must be an int >= {2 if center else 1} (center={center}), got {items!r}"
            )
        self.items, self.center = items, bool(center)
        self.plan: Plan | None = None
        self.used = 0  # plans handed out from the current group's draws
        self.buffer: list[Tensor] = []
        self._release = release

    @property
    def complete(self) -> bool:
        """Whether no group is part-way through (the next plan draws afresh)."""
        return self.plan is None or self.used >= self.items

    def plan_for(self, step: int, draw: Callable[[], Plan]) -> Plan:
        """The plan of the next item: ``draw()`` at a group's start, else a replay of the group's draws."""
        if self.complete:
            self.plan, self.used, self.buffer = draw(), 0, []
        assert self.plan is not None
        self.used += 1
        return self.plan if self.used == 1 else self.plan.replay(step)

    def add(self, contributions: Tensor | None, sq_norms: Tensor | None, probe: Any) -> Tensor | None:
        """Buffer one item's observation; at the group's last item, return the folded observation
        (:func:`fold_items`), else None."""
        if probe is not None:
            raise StateError("observe(probe=...) inside a crn_group: probe outside the group (close it first)")
        if contributions is None:
            got = "sq_norms only" if sq_norms is not None else "nothing"
            raise StateError(f"observe() inside a crn_group got {got}: pass the item's contributions")
        self.buffer.append(contributions.detach())
        if self.used < self.items:
            return None
        folded, self.buffer = fold_items(self.buffer, self.center), []
        return folded

    def close(self, discard: bool = False) -> None:
        """End grouping. Part-way through a group this is an error unless ``discard`` (its buffered observations
        are then dropped, never folded)."""
        if not self.complete and not discard:
            raise StateError(
                f"crn_group closed after {self.used} of {self.items} items: finish the group or close(discard=True)"
            )
        self.plan, self.used, self.buffer = None, 0, []
        if self._release is not None:
            self._release()
            self._release = None

    def __enter__(self) -> CRNGroup:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(discard=exc_type is not None)  # an exception inside the block is not masked

    def state_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "center": self.center,
            "plan": None if self.plan is None else plan_state(self.plan),
            "used": self.used,
            "buffer": [b.cpu().clone() for b in self.buffer],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], release: Callable[[], None] | None = None) -> CRNGroup:
        group = cls(int(state["items"]), bool(state["center"]), release)
        group.plan = None if state["plan"] is None else plan_from_state(state["plan"])
        group.used = int(state["used"])
        group.buffer = [torch.as_tensor(b) for b in state["buffer"]]
        return group

    # A sampler keeps its open group in its ``_crn`` attribute; these two helpers are the only code that sets it.
    @classmethod
    def open_on(cls, owner: Any, items: int, center: bool, busy: bool = False) -> CRNGroup:
        """Open grouping on ``owner`` (a controller or estimator); ``busy``: a step is in progress."""
        if busy or owner._crn is not None:
            where = "inside a step (call it after step())" if busy else "while a crn_group is open (close() it first)"
            raise StateError(f"crn_group() called {where}")
        owner._crn = cls(items, center, release=lambda: setattr(owner, "_crn", None))
        return owner._crn

    @classmethod
    def restore_on(cls, owner: Any, state: dict[str, Any] | None) -> None:
        """Set ``owner``'s open group from a :meth:`state_dict` (``None``: no group)."""
        owner._crn = None if state is None else cls.from_state(state, release=lambda: setattr(owner, "_crn", None))
