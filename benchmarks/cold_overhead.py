"""The controller's per-step time in a tight loop against the same loop with a workload's compute between its
calls, side by side in one run (one process, arms alternating, medians over repetitions).

    python benchmarks/cold_overhead.py [--steps 300] [--reps 3] [--evict-mb 32] [--out docs/bench/cold_overhead.json]

Both arms run the same controller on the same synthetic draws, SDS-3D-shaped by default: ``N = 2`` outer draws,
256-dim contributions (the digits teacher's latent), a 65,536-parameter step gradient every step and split-half
probes when due. Stage costs are given, not timed, so both arms make the same decisions; a probe costs a tenth of
a step. The ``cold`` arm runs a stand-in for the workload where a training loop runs one: a matrix product over
``--evict-mb`` of memory after ``plan()`` (forward and backward; the step's draws are made after it, so they come
fresh, as a backward's gradients do) and after ``step()`` (optimizer). Only the controller's calls are timed. On
a CPU the stand-in evicts what the controller's calls had in cache, so their library calls start cold: the ratio
shows how much of the controller's cost inside a training loop is not its arithmetic.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from typing import Any

import torch

from carv_adapt import AdaptiveController

STAGES = ("plan", "observe", "step")


def run_arm(cold: bool, steps: int, N: int, D: int, P: int, evict_mb: float, seed: int) -> dict[str, float]:
    """One run of ``steps`` controller steps; mean milliseconds per step of each controller call."""
    ctrl = AdaptiveController(num_timesteps=1000, batch_size=N, space="parameter", seed=seed)
    g = torch.Generator().manual_seed(seed)
    n = max(2, int(math.sqrt(evict_mb * 2**20 / 4 / 2)))  # two n x n float32 operands fill evict_mb
    a, b = torch.randn(n, n), torch.randn(n, n)
    a_t = torch.linspace(0.2, 2.0, 1000)  # a strongly t-dependent inner scale: the proposal has work to do
    sec = dict.fromkeys(STAGES, 0.0)

    def workload() -> None:
        if cold:
            torch.mm(a, b)

    probes = 0
    for _ in range(steps):
        t0 = time.perf_counter()
        plan = ctrl.plan()
        sec["plan"] += time.perf_counter() - t0
        workload()  # the draws come last out of the workload, as a backward's gradients do
        xi = torch.randn(N, 1, D, generator=g)
        f = xi + a_t[plan.t].unsqueeze(-1) * torch.randn(N, plan.K, D, generator=g)
        grad = torch.randn(P, generator=g)
        probe_a, probe_b = torch.randn(N, P, generator=g), torch.randn(N, P, generator=g)
        t0 = time.perf_counter()
        probe = (probe_a, probe_b) if ctrl.probe_due() else None
        probes += probe is not None
        costs = {"upstream": 0.01 * N, "teacher": 0.001 * N * plan.K, "probe": 0.002 * N if probe else 0.0}
        ctrl.observe(plan, f, costs=costs, probe=probe, grad=grad)
        t1 = time.perf_counter()
        ctrl.step()
        t2 = time.perf_counter()
        sec["observe"] += t1 - t0
        sec["step"] += t2 - t1
        workload()
    return {**{k: 1e3 * v / steps for k, v in sec.items()}, "probes": probes, "K": ctrl.K}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--N", type=int, default=2)
    ap.add_argument("--dim", type=int, default=256, help="contribution dimension (proxy space)")
    ap.add_argument("--params", type=int, default=65536, help="step-gradient and probe dimension")
    ap.add_argument("--evict-mb", type=float, default=32.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs: dict[str, list[dict[str, float]]] = {"hot": [], "cold": []}
    for r in range(args.reps):
        order = ("hot", "cold") if r % 2 == 0 else ("cold", "hot")
        for arm in order:
            cold = arm == "cold"
            runs[arm].append(run_arm(cold, args.steps, args.N, args.dim, args.params, args.evict_mb, args.seed))
    med = {arm: {k: statistics.median(x[k] for x in rs) for k in STAGES} for arm, rs in runs.items()}
    for m in med.values():
        m["total"] = sum(m[k] for k in STAGES)
    print(f"{'arm':>5} {'plan ms':>8} {'observe ms':>11} {'step ms':>8} {'total ms':>9}")
    for arm, m in med.items():
        print(f"{arm:>5} {m['plan']:8.3f} {m['observe']:11.3f} {m['step']:8.3f} {m['total']:9.3f}")
    ratio = med["cold"]["total"] / med["hot"]["total"]
    print(f"cold / hot: {ratio:.2f}")
    if args.out:
        out: dict[str, Any] = {
            "command": "python benchmarks/cold_overhead.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                       vars(args).items() if k != "out"),
            "machine": platform.processor() or platform.machine(),
            "settings": vars(args),
            "median_ms_per_step": med,
            "runs": runs,
            "cold_over_hot": ratio,
        }  # fmt: skip
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
