"""A cost clock: each stage's cost calibrated once, in isolation, then runs charged by counting.

Wall-clock compute on a shared machine depends on what else runs; comparing two training runs by it compares
their neighbours' load too. The clock times each stage of a workload once per machine (medians of repeated
calls at a few batch sizes), fits the compute model of docs/theory.md §3 the way the controller's cost fit does
(§7.1: ``T_out = a_out + c_out N``, ``T_in = a_in + c_in N K``, ``c_0 = a_out + a_in``), and then charges a step
with ``N`` outer and ``N K`` inner draws exactly

    c_0 + N (c_out + K c_in)        (+ probe_0 + N probe_out + N^2 probe_quad when it took a split-half probe)

so runs compare at equal compute whatever loads the machine while they run. The probe's ``2 N`` vector-Jacobian
products (§7.5) each run back through the whole batched upstream graph of ``N`` draws, so its cost grows as
``N^2``; it is fitted as such (non-negative least squares) rather than per outer draw.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CostClock",
    "fit_line",
    "fit_quadratic",
    "median_seconds",
    "calibrate_sds3d",
    "calibrate_distill",
    "cached_calibration",
    "machine_description",
    "clock_from_medians",
    "config_key",
    "ClockedController",
]


@dataclass(frozen=True)
class CostClock:
    """Calibrated costs in seconds: ``c_0`` per step, ``c_out`` per outer draw, ``c_in`` per inner draw, and the
    split-half probe's ``probe_0 + N probe_out + N^2 probe_quad`` on the steps that probe."""

    c_0: float
    c_out: float
    c_in: float
    probe_0: float = 0.0
    probe_out: float = 0.0
    probe_quad: float = 0.0

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if not v >= 0:
                raise ValueError(f"CostClock.{name} must be >= 0 seconds, got {v!r}")

    def step_cost(self, N: int, K: int, probed: bool = False) -> float:
        """The charge for one step: ``c_0 + N (c_out + K c_in)``, plus the probe's cost when it probed."""
        cost = self.c_0 + N * (self.c_out + K * self.c_in)
        return cost + (self.probe_cost(N) if probed else 0.0)

    def probe_cost(self, N: int) -> float:
        """One split-half probe's charge at ``N`` outer draws: ``probe_0 + N probe_out + N^2 probe_quad``."""
        return self.probe_0 + N * self.probe_out + N * N * self.probe_quad

    def stage_seconds(self, N: int, K: int, probed: bool = False) -> dict[str, float]:
        """:meth:`step_cost` split into the controller's default stages (``overhead`` fixed, ``upstream`` outer,
        ``teacher`` inner, ``probe`` measurement); the values sum to the charge."""
        stages = {"overhead": self.c_0, "upstream": N * self.c_out, "teacher": N * K * self.c_in}
        if probed:
            stages["probe"] = self.probe_cost(N)
        return stages

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostClock:
        return cls(**{k: float(d[k]) for k in ("c_0", "c_out", "c_in", "probe_0", "probe_out", "probe_quad") if k in d})


class ClockedController:
    """Wraps a controller so that it observes each step's cost-clock charge (:meth:`CostClock.stage_seconds`)
    instead of the stage seconds the workload timed: an arm charged by the clock then decides ``K`` on the same
    costs it is charged, not on timers a neighbour's load moves. Everything else is delegated."""

    def __init__(self, controller: Any, clock: CostClock) -> None:
        self._c, self.clock = controller, clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)

    def observe(self, plan: Any, *args: Any, costs: dict[str, float] | None = None, **kw: Any) -> None:
        charged = self.clock.stage_seconds(plan.N, plan.K, kw.get("probe") is not None)
        self._c.observe(plan, *args, costs=charged, **kw)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` with ``a, b >= 0``: a negative intercept (timing noise) is refitted through
    the origin, a negative slope as a constant."""
    n = len(xs)
    if n != len(ys) or n == 0:
        raise ValueError(f"fit_line needs equally many xs and ys, at least one, got {len(xs)} and {len(ys)}")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    a = my - b * mx
    if sxx == 0:  # one batch size: the average cost per unit (an upper bound on the marginal one)
        return 0.0, my / mx if mx > 0 else 0.0
    if b < 0:
        return max(my, 0.0), 0.0
    if a < 0:
        return 0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
    return a, b


def fit_quadratic(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Non-negative least-squares ``y = a + b x + c x^2``."""
    import numpy as np
    from scipy.optimize import nnls

    x = np.asarray(xs, dtype=float)
    coef, _ = nnls(np.stack([np.ones_like(x), x, x * x], axis=1), np.asarray(ys, dtype=float))
    return float(coef[0]), float(coef[1]), float(coef[2])


def median_seconds(fn: Callable[[], Any], reps: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``reps`` calls after ``warmup`` untimed ones: the median ignores the
    calls a neighbour's burst slowed down."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def calibrate_sds3d(
    wl: Any,
    outer_Ns: Sequence[int] = (1, 2, 4),
    inner_NKs: Sequence[int] = (2, 16, 32),
    reps: int = 7,
    seed: int = 0,
) -> tuple[CostClock, dict[str, Any]]:
    """Calibrate an :class:`~carv_adapt.workloads.sds3d.SDS3DWorkload`'s stages in isolation, on a fresh scene.

    Outer (per ``N`` in ``outer_Ns``): render and encode ``N`` cameras, backward through both, an Adam step.
    Inner (per ``N K`` in ``inner_NKs``): the teacher on ``N K`` noised latents. Probe (per ``N``): the split-half
    probe's ``2 N`` vector-Jacobian products at ``K = 2``, fitted as a quadratic in ``N``. Returns the clock and the
    raw medians."""
    from carv_adapt.probe import split_half_probe

    g = torch.Generator().manual_seed(seed)
    scene = wl.new_scene()
    params = list(scene.parameters())
    opt = torch.optim.Adam(params, lr=wl.config.lr)
    T = wl.teacher.num_timesteps
    c = wl.config

    def outer(N: int) -> None:
        opt.zero_grad(set_to_none=True)
        _, lat = wl.upstream(scene, N, g)
        lat.backward(torch.randn(lat.shape, generator=g) * 1e-3)
        opt.step()

    def inner(NK: int) -> Callable[[], Any]:
        with torch.no_grad():
            _, lat = wl.upstream(scene, 1, g)
        lat = lat.expand(NK, *lat.shape[1:]).contiguous()
        t = torch.randint(c.t_min, min(c.t_max, T - 1) + 1, (NK, 1), generator=g)
        eps = torch.randn((NK, 1, *lat.shape[1:]), generator=g)
        return lambda: wl.integrand(lat, t, eps)

    def probe(N: int) -> Callable[[], Any]:
        def fn() -> None:
            _, lat = wl.upstream(scene, N, g)
            f = torch.randn((N, 2, *lat.shape[1:]), generator=g)
            split_half_probe(lat, params, f, g)

        return fn

    return _time_stages(outer, inner, lambda N: wl.upstream(scene, N, g), probe, outer_Ns, inner_NKs, reps)


def calibrate_distill(
    wl: Any,
    outer_Ns: Sequence[int] = (1, 2, 4),
    inner_NKs: Sequence[int] = (2, 16, 32),
    reps: int = 7,
    seed: int = 0,
) -> tuple[CostClock, dict[str, Any]]:
    """Calibrate a :class:`~carv_adapt.workloads.distill.DistillWorkload`'s stages in isolation, on fresh models.

    Outer (per ``N``): ``N`` generator samples, the backward through the generator, its Adam step and the fake
    score's denoising updates on those ``N`` samples (they run once per step on the outer batch, so they scale with
    ``N``, not with ``K``). Inner (per ``N K``): the real and the fake denoiser on ``N K`` noised samples. Probe (per
    ``N``): the split-half probe's ``2 N`` vector-Jacobian products at ``K = 2``, fitted as a quadratic in ``N``.
    Returns the clock and the raw medians."""
    from carv_adapt.probe import split_half_probe

    g = torch.Generator().manual_seed(seed)
    gen, fake = wl.new_models()
    params = list(gen.parameters())
    opt = torch.optim.Adam(params, lr=wl.config.lr)
    fake_opt = torch.optim.Adam(fake.parameters(), lr=wl.config.fake_lr)
    c = wl.config

    def outer(N: int) -> None:
        opt.zero_grad(set_to_none=True)
        x, y = wl.upstream(gen, N, g)
        x.backward(torch.randn(x.shape, generator=g) * 1e-3)
        opt.step()
        for _ in range(c.fake_updates):
            wl.fake_update(fake, fake_opt, x, y, g)

    def inner(NK: int) -> Callable[[], Any]:
        with torch.no_grad():
            x, y = wl.upstream(gen, NK, g)
        t = torch.randint(c.t_min, c.t_max + 1, (NK, 1), generator=g)
        eps = torch.randn((NK, 1, *x.shape[1:]), generator=g)
        return lambda: wl.integrand(fake, x, y, t, eps)

    def probe(N: int) -> Callable[[], Any]:
        def fn() -> None:
            x, _ = wl.upstream(gen, N, g)
            split_half_probe(x, params, torch.randn((N, 2, *x.shape[1:]), generator=g), g)

        return fn

    return _time_stages(outer, inner, lambda N: wl.upstream(gen, N, g), probe, outer_Ns, inner_NKs, reps)


def _time_stages(
    outer: Callable[[int], Any],
    inner: Callable[[int], Callable[[], Any]],
    upstream: Callable[[int], Any],
    probe: Callable[[int], Callable[[], Any]],
    outer_Ns: Sequence[int],
    inner_NKs: Sequence[int],
    reps: int,
) -> tuple[CostClock, dict[str, Any]]:
    """Median seconds of each stage at each size, fitted by :func:`clock_from_medians`. The probe repeats the
    upstream forward to have a graph, so its own cost is the difference from ``upstream(N)`` alone."""
    out_t = {N: median_seconds(lambda N=N: outer(N), reps) for N in outer_Ns}
    in_t = {NK: median_seconds(inner(NK), reps) for NK in inner_NKs}
    fwd_t = {N: median_seconds(lambda N=N: upstream(N), reps) for N in outer_Ns}
    pr_t = {N: max(median_seconds(probe(N), reps) - fwd_t[N], 0.0) for N in outer_Ns}
    return clock_from_medians(out_t, in_t, pr_t, reps)


def run_counts(run: Any, clock: CostClock) -> dict[str, Any]:
    """What a compute-driven run (:class:`~carv_adapt.workloads.base.ComputeRun`) counted inside its budget: steps
    (a last step that crossed the budget is recorded but not counted), final and mean ``K``, probed steps, and the
    compute the probes were charged beyond the step cost."""
    counted = run.checkpoints[-1].step
    recs = run.records[:counted]
    probed = run.probed[:counted]
    return {
        "steps": counted,
        "final_K": recs[-1].K if recs else None,
        "mean_K": sum(r.K for r in recs) / max(len(recs), 1),
        "probed_steps": int(sum(probed)),
        "probe_compute": sum(c - clock.step_cost(r.N, r.K) for r, c, p in zip(recs, run.costs[:counted], probed) if p),
    }


def clock_from_medians(
    out_t: dict[int, float], in_t: dict[int, float], pr_t: dict[int, float], reps: int
) -> tuple[CostClock, dict[str, Any]]:
    """Every workload calibration's §7.1 fit of per-stage medians (``T_out = a_out + c_out N``,
    ``T_in = a_in + c_in N K``, the probe's quadratic in ``N``; ``c_0 = a_out + a_in``) and the raw medians."""
    a_out, c_out = fit_line(list(out_t), list(out_t.values()))
    a_in, c_in = fit_line(list(in_t), list(in_t.values()))
    p_0, p_out, p_quad = fit_quadratic(list(pr_t), list(pr_t.values()))
    clock = CostClock(c_0=a_out + a_in, c_out=c_out, c_in=c_in, probe_0=p_0, probe_out=p_out, probe_quad=p_quad)
    raw = {
        "outer_seconds": {str(k): v for k, v in out_t.items()},
        "inner_seconds": {str(k): v for k, v in in_t.items()},
        "probe_seconds": {str(k): v for k, v in pr_t.items()},
        "a_out": a_out,
        "a_in": a_in,
        "reps": reps,
    }
    return clock, raw


def machine_description() -> str:
    """The host, architecture, torch threads and torch version a calibration holds for."""
    threads = torch.get_num_threads()
    return f"{platform.node()} {platform.machine()}, {threads} torch thread(s), torch {torch.__version__}"


def config_key(d: dict[str, Any]) -> str:
    """A short stable digest of a JSON-able dict (cache keys)."""
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_calibration(
    wl: Any,
    path: Path,
    reps: int,
    recalibrate: bool = False,
    say: Callable[[str], None] | None = None,
) -> tuple[CostClock, dict[str, Any]]:
    """The cost clock of an SDS-3D workload on this machine (:func:`calibrate_sds3d` with ``reps``), read from the
    JSON file ``path`` when it was made for the same config (seed aside), machine and ``reps``, else calibrated and
    written there. The raw medians come back with ``cached`` saying which."""
    path = Path(path)
    # The default teacher is left out of the key, so calibrations cached before the field existed stay valid.
    cfg = {k: v for k, v in wl.config.model_dump().items() if k != "seed" and (k, v) != ("teacher", "tiny-digits")}
    key = config_key({"config": cfg, "machine": machine_description(), "reps": reps, "clock": 2})
    if path.exists() and not recalibrate:
        d = json.loads(path.read_text())
        if d.get("key") == key:
            return CostClock.from_dict(d["clock"]), {**d["raw"], "cached": True}
    if say is not None:
        say("calibrating the cost clock (each stage in isolation)")
    clock, raw = calibrate_sds3d(wl, reps=reps)
    record = {"key": key, "machine": machine_description(), "clock": clock.to_dict(), "raw": raw}
    path.write_text(json.dumps(record, indent=1))
    return clock, {**raw, "cached": False}
