"""How well each one-draw-per-stratum estimate measures a stratified group mean's variance (docs/theory.md §7.4).

Usage: ``PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/stratified_within.py [--groups 300] [--out PATH]``.
For each workload (at a fresh model) one upstream draw is held fixed and ``groups`` independent stratified groups
of ``K`` inner draws are taken from the uniform timestep target. The variance of their group means is the truth;
each estimate of the per-draw stratified within variance, divided by ``K``, is reported as a ratio to it: the
former second differences of adjacent strata, and the split and pair estimates the controller pools now.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from carv_adapt.adapters import build_adapter
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.proposals import TargetMeasure, UniformProposal
from carv_adapt.variance import stratum_within_from_groups

KS = (3, 4, 5, 8, 9, 13, 16)


def _integrand(workload: str, g: torch.Generator) -> tuple[Tensor, Callable[[Tensor, Tensor, Tensor], Tensor], Any]:
    """One fixed upstream draw of ``workload`` and its integrand ``(latents, t, eps) -> f``."""
    a = build_adapter(workload, 0, False)
    wl = a.wl
    with torch.no_grad():
        if workload == "attribution":
            index = int(wl.train_idx[0])
            label = int(wl.labels[index])
            return wl.upstream(index, 1, g), lambda x, t, e: wl.integrand(x, label, t, e), wl
        if workload == "sds3d":
            _, lat = wl.upstream(wl.new_scene(), 1, g)
            return lat, wl.integrand, wl
        gen, fake = wl.new_models()
        x, y = wl.upstream(gen, 1, g)
        return x, lambda lat, t, e: wl.integrand(fake, lat, y.expand(lat.shape[0]), t, e), wl


def _second_differences(f: Tensor) -> float:
    """The former estimate: ``mean ||x_{k-1} - 2 x_k + x_{k+1}||^2 / 6`` (the first difference at ``K = 2``)."""
    if f.shape[1] == 2:
        return float((f[:, 0] - f[:, 1]).pow(2).sum(-1).mean() / 2)
    d = f[:, :-2] - 2 * f[:, 1:-1] + f[:, 2:]
    return float(d.pow(2).sum(-1).mean() / 6)


def measure(workload: str, groups: int) -> list[dict[str, float]]:
    g = torch.Generator().manual_seed(5)
    lat, fn, wl = _integrand(workload, g)
    c = wl.config
    target = TargetMeasure(wl.teacher.num_timesteps, c.t_min, c.t_max)
    rows = []
    for K in KS:
        plan = HierarchicalEstimator(UniformProposal(target), N=groups, K=K, stratification="stratified", seed=1).plan()
        with torch.no_grad():
            f = fn(lat.expand(groups, *lat.shape[1:]).contiguous(), plan.t, plan.noise(lat.shape[1:]))
        f = f.double().reshape(groups, K, -1)
        means = f.mean(1)
        true = float((means - means.mean(0)).pow(2).sum(-1).sum() / (groups - 1))
        split, pairs, n = stratum_within_from_groups(f)
        ratio = {"second_differences": _second_differences(f) / K / true}
        ratio.update(split=float(split) / n / K / true, pairs=float(pairs) / n / K / true)
        ratio["pooled_choice"] = min(ratio["split"], ratio["pairs"])
        rows.append({"workload": workload, "K": K, "true_group_mean_variance": true, **ratio})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=300, help="stratified groups per K")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = [r for w in ("attribution", "sds3d", "distill") for r in measure(w, args.groups)]
    print("| workload | K | second differences | split | pairs | the smaller |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workload']} | {r['K']} | {r['second_differences']:.2f} | {r['split']:.2f} | {r['pairs']:.2f} "
            f"| {r['pooled_choice']:.2f} |"
        )
    print(f"\nestimate / true variance of a group mean, {args.groups} groups per K; {time.perf_counter() - t0:.0f} s")
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "command": "python benchmarks/stratified_within.py " + " ".join(sys.argv[1:]),
                    "groups": args.groups,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
