"""The SDS-3D cost sweep: measured ECM against measured ``c_out / c_in`` as the render gets more expensive
(resolution, samples per ray), with the variance model's predicted curve (docs/theory.md §4, §11).

The scene is trained once at the default settings and then frozen; each setting re-renders that scene, runs
its own pilot (final-space statistics and a cost fit) and measures the baseline, reuse only (``K*``,
uniform, i.i.d.) and full CARV (``K*``, IS, stratified) side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from carv_adapt.adapters import build_adapter
from carv_adapt.allocation import optimal_k
from carv_adapt.bench.ablation import pilot_at, policy_estimator
from carv_adapt.bench.replicate import ecm_interval, replicate
from carv_adapt.proposals import BinnedProposal, UniformProposal
from carv_adapt.variance import work_normalized_variance

__all__ = ["SweepSettings", "cost_sweep", "predicted_ecm_curve"]


@dataclass(frozen=True)
class SweepSettings:
    """The render settings swept and the sizes of each point's measurement."""

    settings: tuple[tuple[int, int], ...] = ((16, 8), (32, 16), (32, 32), (64, 32), (64, 64), (96, 96))
    train_steps: int = 100
    seed: int = 0
    replications: int = 30
    pilot_outer: int = 24
    pilot_inner: int = 16
    k_max: int = 64
    num_bins: int = 20
    quick: bool = False
    teacher: str | None = None  # sds3d: a shipped teacher's name or a diffusers folder (teachers.load)


def predicted_ecm_curve(sb: float, sw_base: float, sw: float, ratio: float, k_max: int) -> tuple[float, int]:
    """``(ECM, K)`` the variance model predicts at ``c_out / c_in = ratio`` (docs/theory.md §3-§4): the baseline's ``W``
    at ``K = 1`` with ``sw_base`` over ``W`` at the optimal integer ``K`` in ``1..k_max`` with ``sw``. Pass the
    uniform within variance as ``sw`` for reuse only, the IS one for CARV."""
    K = optimal_k(sb, sw, ratio, 1.0, 1, k_max)
    return work_normalized_variance(sb, sw_base, 1, ratio, 1.0) / work_normalized_variance(sb, sw, K, ratio, 1.0), K


def cost_sweep(s: SweepSettings, progress: Any = None) -> dict[str, Any]:
    """Run the sweep; returns a JSON-ready dict with one row per render setting and the predicted curves."""
    a0 = build_adapter("sds3d", s.seed, s.quick, teacher=s.teacher)
    state = a0.run(s.train_steps).final_state
    rows = []
    for i, (res, spr) in enumerate(s.settings):
        if progress is not None:
            progress(f"cost sweep: {res}x{res}, {spr} samples per ray ({i + 1}/{len(s.settings)})")
        a = build_adapter("sds3d", s.seed, s.quick, teacher=s.teacher, resolution=res, samples_per_ray=spr)
        seed = s.seed + 100 * (i + 1)
        target, estimate, _, pilot = pilot_at(
            a, state, s.pilot_outer, s.pilot_inner, s.num_bins, (1, 4, 16, 32), 3, seed
        )
        cost = pilot.cost
        N = a.batch_size
        K_u = pilot.best_K(pilot.pi_b, s.k_max)
        p_carv = pilot.carv_proposal()
        K_c = pilot.best_K(p_carv, s.k_max)
        uniform = UniformProposal(target)
        pols = {
            "baseline": policy_estimator(uniform, N, 1, "iid", seed + 10),
            "reuse": policy_estimator(uniform, N, K_u, "iid", seed + 11),
            "carv": policy_estimator(BinnedProposal(target, pilot.edges, p_carv), N, K_c, "stratified", seed + 12),
        }
        reps = replicate(estimate, pols, s.replications)
        e_r = ecm_interval(reps["baseline"], reps["reuse"], seed=seed)
        e_c = ecm_interval(reps["baseline"], reps["carv"], seed=seed + 1)
        rows.append(
            {
                "resolution": res,
                "samples_per_ray": spr,
                "c_out": cost.c_out,
                "c_in": cost.c_in,
                "cost_ratio": cost.c_out / cost.c_in if cost.c_in > 0 else math.inf,
                "sigma_b2": pilot.sigma_b2,
                "sigma_w2": pilot.sigma_w2,
                "sigma_w2_is": pilot.sigma_w2_for(p_carv),
                "K_reuse": K_u,
                "K_carv": K_c,
                "ecm_reuse": e_r[0],
                "ecm_reuse_ci90": list(e_r[1:]),
                "ecm_carv": e_c[0],
                "ecm_carv_ci90": list(e_c[1:]),
                "predicted_ecm_reuse": pilot.W(pilot.pi_b, 1) / pilot.W(pilot.pi_b, K_u),
                "predicted_ecm_carv": pilot.W(pilot.pi_b, 1) / pilot.W(p_carv, K_c),
                "baseline_seconds": reps["baseline"].seconds_per_estimate,
            }
        )
    # The curve uses the statistics pooled over settings (the render changes them only a little).
    n = len(rows)
    sb = sum(r["sigma_b2"] for r in rows) / n
    sw = sum(r["sigma_w2"] for r in rows) / n
    sw_is = sum(r["sigma_w2_is"] for r in rows) / n
    lo = min(r["cost_ratio"] for r in rows)
    hi = max(r["cost_ratio"] for r in rows)
    xs = [
        math.exp(math.log(max(lo / 2, 0.1)) + j * (math.log(hi * 2) - math.log(max(lo / 2, 0.1))) / 59)
        for j in range(60)
    ]
    curve = {
        "cost_ratio": xs,
        "reuse": [predicted_ecm_curve(sb, sw, sw, x, s.k_max)[0] for x in xs],
        "carv": [predicted_ecm_curve(sb, sw, sw_is, x, s.k_max)[0] for x in xs],
        "pooled": {"sigma_b2": sb, "sigma_w2": sw, "sigma_w2_is": sw_is},
    }
    return {"rows": rows, "curve": curve, "train_steps": s.train_steps, "replications": s.replications}
