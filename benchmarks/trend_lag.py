"""How far the controller's between variance trails a falling one (docs/theory.md §7.11), against the exact answer.

    python benchmarks/trend_lag.py [--seeds 10] [--steps 200] [--out docs/bench/trend_lag.json]

Part 1, the controller: a nested stream with exact answers in proxy space. Each step has ``N = 4`` outer draws
``xi ~ N(0, s_B^2(step) I_D)`` and ``K`` inner draws ``a(t) eps``, with ``s_B^2(step) = 4 e^{-r step}``; stage costs
are given. For each fall rate ``r`` and forgetting ``gamma`` it reports the controller's ``sigma_B^2`` at its refits
after step 50, over the true current value ``D s_B^2(step)``: the mean over seeds, its range over refits and the
largest standard error.

Part 2, estimators of the current value from per-step estimates ``truth x chi2_{N-1}/(N-1)``. The forgetting-weighted
mean is compared with the two-rate exponential-trend estimate of §7.11, both as the mean and the standard deviation
of estimate / truth over replications.

Part 3, exact: a discounted least-squares level and slope, read at the current step, on a noiseless exponential
decay over a finite history (level / current value), and the variance of its level over that of the plain weighted
mean for independent noise of one variance.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from typing import Any

import numpy as np
import torch

from carv_adapt import AdaptiveController

RATES = (0.0, 0.007, 0.015)
GAMMAS = (0.97, 0.99)


def controller_ratios(r: float, gamma: float, seeds: int, steps: int, D: int = 32) -> dict[int, list[float]]:
    """Controller ``sigma_B^2`` / truth at each refit step, one value per seed."""
    out: dict[int, list[float]] = {}
    a_t = torch.linspace(0.3, 1.5, 1000, dtype=torch.float64)
    for seed in range(seeds):
        ctrl = AdaptiveController(
            num_timesteps=1000, batch_size=4, forgetting=gamma, warmup_steps=20, refit_every=10, seed=seed
        )
        g = torch.Generator().manual_seed(seed)
        for s in range(steps):
            plan = ctrl.plan()
            xi = math.sqrt(4.0 * math.exp(-r * s)) * torch.randn(plan.N, 1, D, generator=g, dtype=torch.float64)
            eps = torch.randn(plan.N, plan.K, D, generator=g, dtype=torch.float64)
            costs = {"upstream": 0.01 * plan.N, "teacher": 0.001 * plan.N * plan.K}
            ctrl.observe(plan, xi + a_t[plan.t].unsqueeze(-1) * eps, costs=costs)
            ctrl.step()
        for rec in ctrl.history:  # a refit at step s has seen steps 0 .. s - 1
            out.setdefault(rec.step, []).append(rec.sigma_b2 / (D * 4.0 * math.exp(-r * (rec.step - 1))))
    return out


def two_rate_level(e1: np.ndarray, e2: np.ndarray, g1: float, g2: float) -> np.ndarray:
    """The current value ``L`` from two forgetting-weighted means, ``E_g = L (1 - g) / (1 - g q)`` (§7.11)."""
    a1, a2 = e1 / (1 - g1), e2 / (1 - g2)
    q = (a1 - a2) / (a1 * g1 - a2 * g2)
    q = np.clip(q, 0.9, 1.0 / max(g1, g2) - 1e-6)  # a per-step factor the weighted sums can hold
    return a1 * (1 - g1 * q)


def estimator_table(steps: int, N: int = 4, reps: int = 4000, g1: float = 0.97, g2: float = 0.93) -> list[dict]:
    rng = np.random.default_rng(0)
    age = np.arange(steps)[::-1].astype(float)
    w1, w2 = g1**age, g2**age
    rows = []
    for r in RATES:
        truth = 4.0 * np.exp(-r * np.arange(steps))
        b = truth * rng.chisquare(N - 1, size=(reps, steps)) / (N - 1)
        e1, e2 = (b * w1).sum(1) / w1.sum(), (b * w2).sum(1) / w2.sum()
        lvl = two_rate_level(e1, e2, g1, g2)
        now = truth[-1]
        rows.append({"r": r, "gamma": g1, "gamma_2": g2, "mean_mean": float(e1.mean() / now),
                     "mean_sd": float(e1.std() / now), "two_rate_mean": float(lvl.mean() / now),
                     "two_rate_sd": float(lvl.std() / now)})  # fmt: skip
    return rows


def linear_trend_rows(history: int = 150, r: float = 0.015) -> list[dict[str, float]]:
    rows = []
    for gamma in GAMMAS:
        age = np.arange(float(history))
        w = gamma**age
        X = np.stack([np.ones_like(age), -age], 1)
        A = X.T @ (w[:, None] * X)
        level = float(np.linalg.solve(A, X.T @ (w * np.exp(r * age)))[0])  # value at age a is e^{r a} x now
        Ai = np.linalg.inv(A)
        var_ratio = float((Ai @ (X.T @ ((w**2)[:, None] * X)) @ Ai)[0, 0] / ((w**2).sum() / w.sum() ** 2))
        rows.append({"gamma": gamma, "r": r, "history": history, "level_over_now": level, "variance_ratio": var_ratio})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ctrl_rows: list[dict[str, Any]] = []
    print(f"{'r':>6} {'gamma':>6} {'controller / truth after step 50':>34}")
    for r in RATES:
        for gamma in GAMMAS:
            by_step = {s: v for s, v in controller_ratios(r, gamma, args.seeds, args.steps).items() if s > 50}
            means = [statistics.fmean(v) for v in by_step.values()]
            ses = [statistics.stdev(v) / math.sqrt(len(v)) for v in by_step.values()]
            row = {"r": r, "gamma": gamma, "min": min(means), "max": max(means), "max_se": max(ses)}
            ctrl_rows.append(row)
            print(f"{r:6.3f} {gamma:6.2f} {row['min']:16.2f} - {row['max']:.2f} (se <= {row['max_se']:.2f})")
    est = estimator_table(args.steps)
    print(f"\n{'r':>6}  {'gamma 0.97 mean (sd)':>20}  {'two rates 0.97/0.93 (sd)':>24}")
    for e in est:
        m, t = f"{e['mean_mean']:.2f} ({e['mean_sd']:.2f})", f"{e['two_rate_mean']:.2f} ({e['two_rate_sd']:.2f})"
        print(f"{e['r']:6.3f}  {m:>20}  {t:>24}")
    lin = linear_trend_rows()
    print()
    for row in lin:
        print(
            f"linear trend, gamma {row['gamma']}, r {row['r']}, {row['history']}-step history: level / now "
            f"{row['level_over_now']:.2f}, level variance / weighted mean's {row['variance_ratio']:.2f}"
        )
    if args.out:
        out = {"settings": vars(args), "controller": ctrl_rows, "estimators": est, "linear_trend": lin}
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
