"""Controller overhead: seconds per plan / observe / refit as the number of timestep bins and the
contribution dimension grow (synthetic contributions; no workload cost), printed as a table.

    python benchmarks/overhead.py [--steps 40]

Divide by your step time to get the overhead fraction; the demo's workloads take 10-70 ms per step here.
"""

from __future__ import annotations

import argparse
import time

import torch

from carv_adapt import AdaptiveController


def measure(num_bins: int, dim: int, N: int, K: int, steps: int) -> tuple[float, float, float]:
    ctrl = AdaptiveController(
        num_timesteps=1000,
        num_bins=num_bins,
        batch_size=N,
        warmup_k=(K,),
        k_min=K,
        k_max=K,
        warmup_steps=1,
        refit_every=10**9,
        smoothing=1,
    )
    f = torch.randn(N, K, dim)
    t_plan = t_obs = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        plan = ctrl.plan()
        t1 = time.perf_counter()
        ctrl.observe(plan, f, costs={"upstream": 0.01, "teacher": 0.001 * K})
        t2 = time.perf_counter()
        ctrl.step()
        t_plan, t_obs = t_plan + t1 - t0, t_obs + t2 - t1
    t0 = time.perf_counter()
    for _ in range(5):
        ctrl.refit()
    t_refit = (time.perf_counter() - t0) / 5
    return t_plan / steps, t_obs / steps, t_refit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'bins':>6} {'dim':>9} {'N':>3} {'K':>3} {'plan ms':>9} {'observe ms':>11} {'refit ms':>9}")
    for num_bins in (10, 100, 1000):
        for dim in (256, 65536, 1048576):
            p, o, r = measure(num_bins, dim, 4, 8, args.steps if dim < 10**6 else max(5, args.steps // 8))
            print(f"{num_bins:>6} {dim:>9} {4:>3} {8:>3} {1e3 * p:9.3f} {1e3 * o:11.3f} {1e3 * r:9.3f}")


if __name__ == "__main__":
    main()
