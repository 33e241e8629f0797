"""The SDS-3D ablation with 360 degree cameras and the "+outer" column (docs/theory.md §15).

Usage: ``PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/outer_designs.py [--quick] [--out PATH]``. Cameras orbit
the vertical axis (azimuth over the full circle, within 30 degrees of the horizon); the ablation measures every
variant at frozen checkpoints of an adaptive run, "+outer" being "+strat" with stratified or antithetic azimuths.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from carv_adapt.bench import BenchSettings
from carv_adapt.bench.ablation import ablate
from carv_adapt.bench.markdown import outer_table
from carv_adapt.bench.report import ablation_table

CAMERAS_360 = {"camera_axis": "up", "min_angle_deg": 60.0, "max_angle_deg": 120.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes (not a measurement)")
    ap.add_argument("--steps", type=int, default=300, help="training steps of the adaptive run")
    ap.add_argument("--checkpoints", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--batch-size", type=int, default=2, help="outer draws N per step")
    ap.add_argument("--replications", type=int, default=80, help="interleaved replications per policy")
    ap.add_argument("--iddpm-history", type=int, default=10, help="losses per timestep of the IDDPM column's fill")
    ap.add_argument("--out", type=Path, default=Path("docs/bench/outer/sds3d_360.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bench = BenchSettings(workloads=("sds3d",), quick=args.quick, steps={"sds3d": args.steps})
    config = {**CAMERAS_360, "batch_size": args.batch_size}
    s = replace(bench.ablation("sds3d"), checkpoints=tuple(args.checkpoints), config=config)
    if not args.quick:
        s = replace(s, replications=args.replications, iddpm_history=args.iddpm_history)
    t0 = time.perf_counter()
    res = ablate("sds3d", s, progress=lambda m: print(m, flush=True))
    result = {
        "command": "python benchmarks/outer_designs.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "settings": {k: v for k, v in asdict(s).items()},
        "wall_seconds": time.perf_counter() - t0,
        "ablation": [res],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("\n".join(ablation_table(result)))
    print()
    print("\n".join(outer_table(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
