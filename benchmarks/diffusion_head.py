"""The diffusion-head (MAR-style) workload at equal cost-clock compute: K = 1, K = 4, improved-diffusion's resampler
at K = 4 and the adaptive controller (variance, progress), over seeds; prints a table, writes a JSON file.

    OMP_NUM_THREADS=1 python benchmarks/diffusion_head.py [--steps 800] [--seeds 0 1 2] [--quick]
        [--out docs/bench/diffusion_head.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from carv_adapt.bench.head import ARMS, HeadBenchSettings, run_head_bench


def _ci(d: dict) -> str:
    return f"{d['mean']:.3g}" if math.isnan(d["lo"]) else f"{d['mean']:.3g} [{d['lo']:.3g}, {d['hi']:.3g}]"


def table(result: dict) -> str:
    """The markdown table of a result: per arm, final scores with 95 % intervals over seeds."""
    summ = result["summary"]
    head = "| arm | steps | mean K | val loss | val loss (curve mean) | FD | accuracy | val loss - K=4 | FD - K=4 |"
    lines = [head, "|" + "---|" * 9]
    for arm in ARMS:
        if arm not in summ:
            continue
        a = summ[arm]
        diff = a.get("minus_K4")
        lines.append(
            f"| {arm} | {a['steps']['mean']:.0f} | {a['mean_K']['mean']:.2f} | {_ci(a['val_loss'])} | "
            f"{_ci(a['val_loss_auc'])} | {_ci(a['fd'])} | {_ci(a['accuracy'])} | "
            f"{_ci(diff['val_loss']) if diff else '-'} | {_ci(diff['fd']) if diff else '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800, help="K = 1 steps that set every arm's cost-clock budget")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="a smoke test: tiny sizes, not a measurement")
    ap.add_argument("--out", type=Path, default=Path("docs/bench/diffusion_head.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = HeadBenchSettings(steps=args.steps, seeds=tuple(args.seeds))
    if args.quick:
        s = HeadBenchSettings(steps=min(args.steps, 30), seeds=tuple(args.seeds), calibration_reps=3, pilot_outer=4,
                              pilot_inner=4, n_per_class=5, fractions=(0.0, 0.5, 1.0), quick=True)  # fmt: skip
    result = run_head_bench(s, lambda msg: print(msg, flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    for r in result["runs"]:
        if "pilot" in r:
            p = r["pilot"]
            kc, ki = p["K_star_continuous"], p["K_star"]
            print(f"seed {r['seed']}: pilot at the K=4 final parameters: sigma_B^2 {p['sigma_b2']:.3g}, "
                  f"sigma_W^2 {p['sigma_w2']:.3g}, K* {kc:.1f} (integer <= {s.k_max}: {ki})")  # fmt: skip
        if "controller" in r:
            print(f"seed {r['seed']} {r['arm']}: K path {r['controller']['K_path']}")
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
