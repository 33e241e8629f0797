"""Does the output-space profile have the parameter-space profile's shape? (docs/theory.md §7.6, §7.9)

Each gradient workload trains under the demo's controller; at fractions of the run its frozen parameters get a
pilot of uniform i.i.d. draws whose every draw is measured twice: ``||f||^2`` in the output space the controller's
profile sees and ``||J^T f||^2`` in the parameter space (one VJP per draw). Per timestep bin it reports the ratio of
the two second moments, and, in the parameter space, the within variance of three proposals relative to the best
one, ``p*`` of the parameter-space profile: ``p*`` of the output-space profile (what an uncalibrated controller
aims at), ``p*`` of the output-space profile times the ratio fitted from a few pairs the way the controller fits it
(§7.9), and uniform.

    python benchmarks/profile_space.py --out docs/bench/profile_space.json    # --quick: a smoke test
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from carv_adapt.adapters import build_adapter
from carv_adapt.bench.markdown import md_table
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.proposals import UniformProposal
from carv_adapt.proposals.base import TargetMeasure, bin_index
from carv_adapt.stats.calibration import ProfileCalibration
from carv_adapt.stats.costs import CostEstimate
from carv_adapt.stats.grouped import BetweenWithin
from carv_adapt.stats.snapshot import Statistics
from carv_adapt.variance import is_second_moment, optimal_proposal_bins

__all__ = ["profile_space", "profile_space_table", "main"]

WORKLOADS = {"sds3d": 300, "distill": 150, "diffusion_head": 300}  # gradient workloads and their training steps


def _pilot(draws: Any, target: TargetMeasure, edges: torch.Tensor, plans: int, K: int, seed: int) -> dict[str, Any]:
    """Per-bin sums of both squared norms over ``plans`` uniform i.i.d. plans, the parameter-space ``M2``, and the
    draws' ``(t, ||f||^2, ||J^T f||^2)`` per plan."""
    B = edges.numel() - 1
    est = HierarchicalEstimator(UniformProposal(target), N=4, K=K, stratification="iid", seed=seed)
    sp, sx, cnt = torch.zeros(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64), torch.zeros(B)
    means, ssw, dof = [], 0.0, 0
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for _ in range(plans):
        plan = est.plan()
        g, norms = draws(plan, True)
        g = g.double()
        y, x, b = g.pow(2).flatten(2).sum(-1), norms.double().pow(2), bin_index(plan.t, edges)
        sp.index_add_(0, b.reshape(-1), y.reshape(-1))
        sx.index_add_(0, b.reshape(-1), x.reshape(-1))
        cnt.index_add_(0, b.reshape(-1), torch.ones(b.numel()))
        gbar = g.mean(dim=1)
        ssw += float(((g - gbar[:, None]) ** 2).sum())
        dof += plan.N * (plan.K - 1)
        means.append(gbar)
        pairs.append((plan.t, x, y))
    xbar = torch.cat(means)
    M2 = float((xbar**2).sum() / xbar.shape[0]) - ssw / dof / K
    return {"sp": sp, "sx": sx, "count": cnt, "M2": M2, "pairs": pairs}


def _checkpoint(a: Any, state: dict, plans: int, K: int, calib_plans: int, seed: int) -> dict[str, Any]:
    c = a.wl.config
    target = TargetMeasure(a.wl.teacher.num_timesteps, c.t_min, c.t_max)
    edges = target.bin_edges(20)
    pi_b = target.bin_mass(edges).double()
    draws = a.draws(state)
    p = _pilot(draws, target, edges, plans, K, seed)
    held_out = _pilot(draws, target, edges, calib_plans, K, seed + 1)["pairs"]  # not in the reference profile
    seen = p["count"] > 0
    m_p = torch.where(seen, p["sp"] / p["count"].clamp_min(1), (p["sp"].sum() / p["count"].sum()))
    m_x = torch.where(seen, p["sx"] / p["count"].clamp_min(1), (p["sx"].sum() / p["count"].sum()))
    ratio = m_p / m_x

    def sw(q: torch.Tensor) -> float:  # parameter-space within variance of proposal q (i.i.d. inner draws)
        return float(is_second_moment(pi_b, q, m_p)) - p["M2"]

    best = sw(optimal_proposal_bins(pi_b, m_p))
    # The controller's view: a few pairs from other draws, fitted as decide() fits them (§7.9).
    cal = ProfileCalibration(edges)
    for t, x, y in held_out:
        cal.update(t, x, y)
    r, r_se = cal.compute()
    nan = math.nan
    bw = BetweenWithin(nan, math.inf, nan, math.inf, nan, nan, 1.0, p["M2"], 0.0)
    st = Statistics(
        pi_b, m_x, torch.zeros_like(m_x), p["count"].double(), bw, bw, CostEstimate(0.0, 0.0, 0.0, 0.0),
        ratio=r, ratio_se=r_se, ratio_counts=cal.folded().count.clone(),
    )  # fmt: skip
    fitted = st.param_profile()
    assert fitted is not None
    return {
        "ratio_per_bin": (ratio / ratio[seen].mean()).tolist(),
        "ratio_span": float(ratio[seen].max() / ratio[seen].min()),
        "within_over_best": {
            "p* (output space)": sw(optimal_proposal_bins(pi_b, m_x)) / best,
            "p* (calibrated)": sw(optimal_proposal_bins(pi_b, fitted[0])) / best,
            "uniform": sw(pi_b) / best,
        },
        "pilot_draws": int(p["count"].sum()),
        "calibration_pairs": int(cal.folded().count.sum()),
    }


def profile_space(
    workloads: dict[str, int] = WORKLOADS,
    fractions: tuple[float, ...] = (0.25, 0.5, 1.0),
    plans: int = 12,
    K: int = 16,
    calib_plans: int = 1,
    quick: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Train each workload (demo controller), then measure both profiles at ``fractions`` of its run."""
    from carv_adapt.demo import demo_controller

    t0 = time.perf_counter()
    out: dict[str, Any] = {"settings": {"plans": plans, "K": K, "calib_plans": calib_plans, "quick": quick}}
    rows = []
    for name, steps in workloads.items():
        steps = max(8, steps // 10) if quick else steps
        a = build_adapter(name, 0, quick)
        n = a.controller_steps(steps)
        at = sorted({max(0, round(f * n) - 1) for f in fractions})
        res = a.run(steps, controller=demo_controller(a, steps, 0), snapshot_steps=at)
        for i, st in enumerate(at):
            if progress is not None:
                progress(f"{name}: checkpoint {i + 1}/{len(at)}")
            row = _checkpoint(a, res.snapshots[st], 2 if quick else plans, 4 if quick else K, calib_plans, 1000 + st)
            rows.append({"workload": name, "step": st + 1, "of": n, **row})
    out["checkpoints"] = rows
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def profile_space_table(result: dict[str, Any]) -> str:
    """Markdown: per checkpoint the ratio's span and the three proposals' parameter-space within variance."""
    keys = ("p* (output space)", "p* (calibrated)", "uniform")
    rows = [
        [r["workload"], f"{r['step']}/{r['of']}", f"{r['ratio_span']:.1f}"]
        + [f"{r['within_over_best'][k]:.3f}" for k in keys]
        + [str(r["calibration_pairs"])]
        for r in result["checkpoints"]
    ]
    head = ["workload", "step", "ratio span (max/min)", *[f"within: {k} / best" for k in keys], "pairs fitted"]
    return "\n".join(md_table(head, rows))


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/profile_space.py --out FILE [--quick]``."""
    import argparse

    p = argparse.ArgumentParser(prog="benchmarks/profile_space.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="profile_space.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = profile_space(quick=args.quick, progress=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
    Path(args.out).write_text(json.dumps(result, indent=1))
    table = profile_space_table(result)
    Path(args.out).with_suffix(".md").write_text(
        "# Output- against parameter-space profile\n\nCommand: `python benchmarks/profile_space.py --out "
        f"{args.out}`; {result['wall_seconds'] / 60:.1f} min.\n\n{table}\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
