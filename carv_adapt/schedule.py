"""Warm-up and retune windows (STYLE §5): a pure function you can print."""

from __future__ import annotations

from typing import TYPE_CHECKING

from carv_adapt.errors import ConfigError

if TYPE_CHECKING:
    from carv_adapt.policy import ScheduleSpec

__all__ = ["is_refit_step", "refit_steps", "steps_to_refit", "plans_ahead", "warmup_k", "warmup_share"]


def is_refit_step(step: int, warmup_steps: int, refit_every: int) -> bool:
    """True when the controller refits on entering ``step`` (after ``step`` observed steps).

    The first refit closes the warm-up (``step == warmup_steps``), then one every ``refit_every`` steps.
    """
    if refit_every < 1:
        raise ConfigError(f"refit_every must be >= 1, got {refit_every!r}")
    return step >= warmup_steps and step > 0 and (step - warmup_steps) % refit_every == 0


def steps_to_refit(step: int, warmup_steps: int, refit_every: int) -> int:
    """How many steps, ``step`` included, run before the next refit (which happens on entering a later step)."""
    if step < warmup_steps:
        return warmup_steps - step
    return refit_every - (step - warmup_steps) % refit_every


def plans_ahead(step: int, warmup_steps: int, refit_every: int, cycling: bool, most: int = 16) -> int:
    """How many plans to draw at ``step`` for the state in force: until the next refit, at most ``most``; one while
    a warm-up ``cycling`` K changes it every step."""
    return 1 if cycling else min(most, steps_to_refit(step, warmup_steps, refit_every))


def refit_steps(warmup_steps: int, refit_every: int, total_steps: int) -> list[int]:
    """All refit steps in ``[0, total_steps]``, e.g. ``refit_steps(20, 10, 60) == [20, 30, 40, 50, 60]``."""
    return [s for s in range(total_steps + 1) if is_refit_step(s, warmup_steps, refit_every)]


def warmup_k(step: int, schedule: tuple[int, ...]) -> int:
    """The warm-up ``K`` at ``step``: cycles through ``schedule``, so the cost fit sees several ``N K``."""
    return schedule[step % len(schedule)]


def warmup_share(refits: int, schedule: ScheduleSpec, forgetting: float) -> float:
    """The share of the statistics' weight that the warm-up's steps still hold at the refit after ``refits``
    earlier ones, under ``forgetting`` per step: ``(g^(t - w) - g^t) / (1 - g^t)`` at ``t = w + refits R``
    (``w`` warm-up steps, ``R`` steps per refit; 1 at the first refit, and without forgetting ``w / t``)."""
    w, t = schedule.warmup_steps, schedule.warmup_steps + refits * schedule.refit_every
    if forgetting >= 1.0:
        return w / t if t > 0 else 1.0
    return (forgetting ** (t - w) - forgetting**t) / (1.0 - forgetting**t)
