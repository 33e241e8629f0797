"""Forward + backward cost of the voxel renderer alone, one random camera per call (docs/theory.md §11).

docs/theory.md §11 measured render + VAE encode at 17 / 59 / 213 ms for (32, 32) / (64, 64) / (128, 64)
(resolution, samples per ray) on 2 CPU cores; this times the render part only.

    python benchmarks/render_cost.py [--grid-size 20] [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from carv_adapt.workloads.render import VoxelScene, num_sample_points, render, sample_cameras

SETTINGS = [(32, 32), (64, 64), (128, 64)]


def time_render(grid_size: int, resolution: int, samples: int, repeats: int, warmup: int = 2) -> list[float]:
    """Milliseconds of ``repeats`` forward + backward passes, each from a fresh random camera."""
    scene = VoxelScene(grid_size)
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(warmup + repeats):
        cams = sample_cameras(1, g)
        scene.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        render(scene, cams, resolution, samples).square().mean().backward()
        if i >= warmup:  # the first calls pay for allocator growth
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid-size", type=int, default=20, help="the SDS-3D workload's default grid")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"grid {args.grid_size}^3, {args.threads} threads, torch {torch.__version__}, {args.repeats} reps")
    print(f"{'resolution':>10} {'samples':>8} {'points':>10} {'median ms':>10} {'min ms':>8}")
    for res, spr in SETTINGS:
        ms = time_render(args.grid_size, res, spr, args.repeats)
        pts = num_sample_points(1, res, spr)
        print(f"{res:>10} {spr:>8} {pts:>10} {statistics.median(ms):>10.1f} {min(ms):>8.1f}")


if __name__ == "__main__":
    main()
