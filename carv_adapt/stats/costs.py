"""Per-stage cost measurement (theory.md §3, §7): stage timers and a tracker fitting ``c_0``, ``c_out``, ``c_in``."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch

from carv_adapt.errors import ConfigError
from carv_adapt.stats.base import NonFinitePolicy, SumStatistic
from carv_adapt.variance import fit_linear_cost, linear_cost_from_shape

__all__ = ["StageTimer", "CostTracker", "CostEstimate", "StageRole"]

# "measurement" stages (the split-half probe) are the controller's own overhead: reported, never charged to the
# policy's cost model, whose W excludes them (docs/theory.md §12, R7).
StageRole = Literal["outer", "inner", "fixed", "measurement"]

DEFAULT_ROLES: dict[str, StageRole] = {
    "upstream": "outer",
    "backward": "outer",
    "teacher": "inner",
    "inner": "inner",
    "surrogate": "inner",  # a control variate's surrogate runs once per inner draw (docs/theory.md §14)
    "overhead": "fixed",
    "probe": "measurement",
}


class StageTimer:
    """Times one stage, as a context manager; reusable, accumulating over entries.

    On a CUDA device it records ``torch.cuda.Event`` pairs (host wall time would only measure the
    kernel launches); the elapsed time is resolved lazily in :meth:`seconds`, which synchronizes on the
    end events. On CPU it uses ``time.perf_counter``.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._cpu_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._start: float | torch.cuda.Event | None = None

    @property
    def uses_cuda_events(self) -> bool:
        return self.device.type == "cuda"

    def __enter__(self) -> StageTimer:
        if self.uses_cuda_events:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            self._start = ev
        else:
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.uses_cuda_events:
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
            self._events.append((self._start, end))  # type: ignore[arg-type]
        else:
            self._cpu_seconds += time.perf_counter() - self._start  # type: ignore[operator]
        self._start = None

    def seconds(self) -> float:
        """Total seconds over all entries so far (synchronizes CUDA end events)."""
        total = self._cpu_seconds
        for start, end in self._events:
            end.synchronize()
            total += start.elapsed_time(end) / 1000.0
        return total


@dataclass(frozen=True)
class CostEstimate:
    """Fitted costs in seconds: ``c_0`` fixed per step, ``c_out`` per outer draw, ``c_in`` per inner draw."""

    c_0: float
    c_out: float
    c_in: float
    steps: float
    measurement: float = 0.0  # seconds per step in measurement stages (probes), outside the cost model
    probe_step: float = 0.0  # mean measurement seconds of a probing step after the first, 0 before a second


# What one step adds (CostTracker.update): the lines' sums, the pair sums, the probe bookkeeping.
_STEP_SUMS = ("out_sx", "out_sxx", "out_sy", "out_sxy", "in_sx", "in_sxx", "in_sy", "in_sxy", "steps", "fixed")
_STEP_SUMS += ("out_pxu", "out_pxv", "in_pxu", "in_pxv")
_STEP_SUMS += ("measurement", "measured_steps", "probe_seconds", "probes_seen")


def _pair(x_s: float, y_s: float, x_t: float, y_t: float) -> tuple[float, float]:
    """One pair's ``(w dx u, w dx v)``: with ``y = load (a + c x)`` at one load, ``u = y_t - y_s`` is ``c dx`` and
    ``v = x_t y_s - x_s y_t`` is ``a dx`` times the load, so ``sum w dx v / sum w dx u`` estimates ``r = a / c``.
    ``dx``, known exactly, is the instrument (a regression of ``v`` on the noisy ``u`` would shrink ``r``); ``w``
    weighs down pairs at large ``x``, whose ``v`` is noisy and says little about the intercept."""
    dx = x_t - x_s
    if dx == 0:
        return 0.0, 0.0
    w = dx / (x_t * x_t + x_s * x_s) ** 2
    return w * (y_t - y_s), w * (x_t * y_s - x_s * y_t)


class CostTracker(SumStatistic):
    """Fits ``T_outer = a_out + c_out N`` and ``T_inner = a_in + c_in N K`` over the steps actually run.

    ``c_0 = a_out + a_in + mean fixed-stage time``. Each line's shape, ``r = a / c``, comes from pairs of
    successive steps that ran different ``N K``: the machine's load scales both steps of a pair alike, so a pair
    measures the shape whatever the load, and a held ``K`` (no new pairs) keeps the shape it had. The recent level
    (sums with forgetting) then sets ``c`` and ``a`` under the current load. A least-squares line over the window
    would instead read a change of load since ``K`` last moved as a slope (docs/theory.md §7.1). Before any
    pair, the least-squares line over the window; with a single ``N K`` seen so far the inner intercept is not
    identified, and ``c_in`` is the average cost per inner draw (an upper bound on the marginal cost).
    """

    def __init__(self, roles: dict[str, StageRole] | None = None, nonfinite: NonFinitePolicy = "skip") -> None:
        super().__init__(nonfinite)
        self.roles: dict[str, StageRole] = dict(DEFAULT_ROLES if roles is None else roles)
        for role in ("out", "in"):
            for s in ("x", "xx", "y", "xy"):
                self.add_state(f"{role}_s{s}", torch.zeros(()))
        self.add_state("steps", torch.zeros(()))
        # Per role, weighted sums of dx u and dx v over pairs of successive steps with different x (theory §7.1).
        for role in ("out", "in"):
            for s in ("u", "v"):
                self.add_state(f"{role}_px{s}", torch.zeros(()), decay="slow", added_later=True)
        self._prev: tuple[float, float, float, float] | None = None  # last step's (x_out, y_out, x_in, y_in)
        self.add_state("fixed", torch.zeros(()))
        self.add_state("measurement", torch.zeros(()))
        # Probing steps after the first (the first pays one-time costs: allocations, the vectorized backward's
        # set-up) and their measurement seconds: the cost of a probe that the probe schedule plans with.
        self.add_state("measured_steps", torch.zeros(()), added_later=True)
        self.add_state("probe_seconds", torch.zeros(()), added_later=True)
        self.add_state("probes_seen", torch.zeros((), dtype=torch.float64), decay="none", added_later=True)

    def role(self, stage: str) -> StageRole:
        try:
            return self.roles[stage]
        except KeyError:
            raise ConfigError(
                f"unknown cost stage {stage!r}; known stages {sorted(self.roles)} — declare it with "
                f"stage_roles={{{stage!r}: 'outer' | 'inner' | 'fixed' | 'measurement'}}"
            ) from None

    def update(self, N: int, K: int, stage_seconds: dict[str, float], measured: bool | None = None) -> None:
        """Accumulate one step's per-stage seconds for an ``N x K`` plan. ``measured``: whether the step took a
        probe (``None``: whether its measurement stages took any time). The controller says it, so that a probe
        timer left running on steps without a probe does not make every step a measuring one, diluting the mean
        cost of a probe that the probe schedule reads (docs/theory.md §13.6); the first probe, which pays one-time
        costs, counts toward the probes' share of compute but not toward that mean."""
        totals = {"outer": 0.0, "inner": 0.0, "fixed": 0.0, "measurement": 0.0}
        for stage, sec in stage_seconds.items():
            if sec < 0:
                raise ConfigError(f"cost of stage {stage!r} must be >= 0 seconds, got {sec!r}")
            totals[self.role(stage)] += float(sec)
        if not all(math.isfinite(v) for v in totals.values()) and not self._finite_or_reject(
            "stage time", torch.tensor(list(totals.values()))
        ):
            return
        xo, yo, xi, yi = float(N), totals["outer"], float(N * K), totals["inner"]
        pxo, pyo, pxi, pyi = self._prev or (xo, yo, xi, yi)  # the first step pairs with itself: dx = 0 adds nothing
        self._prev = (xo, yo, xi, yi)
        measured = totals["measurement"] > 0 if measured is None else measured
        warm = float(measured and float(self.probes_seen) > 0)
        self._add(  # one indexed add per step: this runs on every step
            _STEP_SUMS,
            (xo, xo * xo, yo, xo * yo, xi, xi * xi, yi, xi * yi, 1.0, totals["fixed"])
            + (*_pair(pxo, pyo, xo, yo), *_pair(pxi, pyi, xi, yi))
            + (totals["measurement"], warm, warm * totals["measurement"], float(measured)),
        )

    def compute(self) -> CostEstimate:
        v = self.scalars()  # one host transfer for all the 0-dim sums
        w = v["steps"]

        def line(role: str) -> tuple[float, float]:
            recent = (w, *(v[f"{role}_s{s}"] for s in ("x", "xx", "y", "xy")))
            if v[f"{role}_pxu"] > 0:
                return linear_cost_from_shape(v[f"{role}_pxv"] / v[f"{role}_pxu"], w, recent[1], recent[3])
            return fit_linear_cost(*recent)

        (a_out, c_out), (a_in, c_in) = line("out"), line("in")
        fixed = v["fixed"] / w if w > 0 else 0.0
        measurement = v["measurement"] / w if w > 0 else 0.0
        probe_step = v["probe_seconds"] / v["measured_steps"] if v["measured_steps"] > 0 else 0.0
        return CostEstimate(a_out + a_in + fixed, c_out, c_in, w, measurement=measurement, probe_step=probe_step)

    def reset(self) -> None:
        super().reset()
        self._prev = None

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["prev"] = self._prev  # the last step, to pair with the next one; not a sum (merge leaves it)
        return out

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        prev = state.pop("prev", None)
        super().load_state_dict(state)
        self._prev = None if prev is None else tuple(float(x) for x in prev)  # type: ignore[assignment]
