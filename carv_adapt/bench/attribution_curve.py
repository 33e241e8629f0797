"""Attribution: Spearman rank correlation with a reference as a function of teacher evaluations, per policy, with
and without common random numbers (docs/theory.md §10, §18).

Each arm computes TRAK-style features of the same examples (:mod:`carv_adapt.workloads.attribution`) one example
per step, round after round, and is charged ``N K`` per step: the x-axis is teacher evaluations per example,
counted, never timed. At each fraction of the budget the scores of the features so far are compared with a
reference by :func:`~carv_adapt.workloads.attribution.mean_spearman`. The reference of a seed is the average of two
independent high-compute estimates (``reference_outer x reference_inner`` uniform draws each, shared across
examples, from seeds no arm uses); the Spearman of its two halves with each other is reported as its reliability.

Arms: ``baseline`` (``K = 1``, uniform, i.i.d.); ``fixed_k8`` (``K = 8``, teacher-weight prior mixed with
``alpha`` of the target, stratified: the paper's choice); the online controller deciding by
``objective="variance"`` or ``"progress"``. Each runs with independent draws per example and with common random
numbers (every example of a round replays one plan). Run ``python benchmarks/attribution_curve.py``
(``--quick`` for a smoke test); it writes ``attribution_curve.json`` and ``attribution_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["ARMS", "CurveSettings", "attribution_curve", "summarize", "merge", "markdown", "plot", "main"]

ARMS = ("baseline", "fixed_k8", "adaptive_variance", "adaptive_progress")
LABELS = {
    "baseline": "baseline (K=1, uniform, iid)",
    "fixed_k8": "fixed K=8, prior IS, stratified",
    "adaptive_variance": "adaptive, objective=variance",
    "adaptive_progress": "adaptive, objective=progress",
}


@dataclass(frozen=True)
class CurveSettings:
    """What :func:`attribution_curve` runs (defaults: the committed run, about 15 min of one CPU thread).

    Attributes:
        seeds: one example selection, reference and set of draws per seed.
        num_train, num_queries: examples per seed (``M = num_train + num_queries`` steps per round; an odd ``M``
            lets the controller's warm-up cycle give consecutive rounds different ``K`` under common random
            numbers, where ``K`` can only change between rounds).
        evals_per_example: the budget, teacher evaluations per example; ``fractions`` of it are scored.
        reference_outer, reference_inner: draws of each reference half, per example.
        fixed_k, fixed_alpha: the fixed arm's ``K`` and defensive mixture weight.
        k_max: the controller's bound (``fixed_k``: every arm finishes its first round by the first checkpoint).
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    num_train: int = 29
    num_queries: int = 6
    proj_dim: int = 32
    batch_size: int = 2
    evals_per_example: int = 64
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    reference_outer: int = 16
    reference_inner: int = 32
    fixed_k: int = 8
    fixed_alpha: float = 0.1
    k_max: int = 8
    arms: tuple[str, ...] = ARMS
    crn: tuple[bool, ...] = (False, True)
    quick: bool = False
    out: Path = Path("docs/bench")
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def smoke(cls, **kw: Any) -> CurveSettings:
        """A smoke test's sizes: well formed, not a measurement."""
        base = dict(seeds=(0,), num_train=7, num_queries=2, evals_per_example=16, reference_outer=2)
        return cls(**{**base, "reference_inner": 4, "quick": True, **kw})


def _sampler(arm: str, s: CurveSettings, wl: Any, seed: int, M: int) -> tuple[Any, Any]:
    """``(controller, fixed policy)`` of an arm, one of them None."""
    from carv_adapt.controller import AdaptiveController
    from carv_adapt.estimator import HierarchicalEstimator
    from carv_adapt.proposals import UniformProposal, defensive_mixture, teacher_weight_proposal

    N, c = s.batch_size, wl.config
    if arm == "baseline":
        return None, HierarchicalEstimator(UniformProposal(wl.target), N=N, K=1, stratification="iid", seed=seed)
    if arm == "fixed_k8":
        ones = torch.ones(wl.teacher.num_timesteps, dtype=torch.float64)
        prior = defensive_mixture(teacher_weight_proposal(wl.target, ones, wl.teacher.alphas_cumprod), s.fixed_alpha)
        return None, HierarchicalEstimator(prior, N=N, K=s.fixed_k, stratification="stratified", seed=seed)
    # Warm-up: two rounds; then a refit per round (under common random numbers statistics arrive once per round).
    # The frozen teacher makes the integrand stationary: no forgetting.
    ctrl = AdaptiveController(
        num_timesteps=wl.teacher.num_timesteps,
        t_min=c.t_min,
        t_max=c.t_max,
        batch_size=N,
        warmup_steps=2 * M,
        refit_every=M,
        k_max=s.k_max,
        forgetting=1.0,
        seed=seed,
        objective=arm.removeprefix("adaptive_"),
    )
    return ctrl, None


def _reference(s: CurveSettings, wl: Any, seed: int) -> tuple[torch.Tensor, float]:
    """The reference scores of a seed (two halves averaged) and the Spearman of the halves."""
    from carv_adapt.workloads.attribution import cosine_scores, mean_spearman

    halves = [wl.reference(seed=10_000 + 1_000 * h + seed) for h in (0, 1)]
    train = sum(r.train_features for r in halves) / 2
    queries = sum(r.query_features for r in halves) / 2
    return cosine_scores(queries, train), mean_spearman(halves[0].scores, halves[1].scores)


def attribution_curve(
    s: CurveSettings, say: Callable[[str], None] = print, on_seed: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run every arm with and without common random numbers on every seed; returns the JSON-able result
    (``on_seed`` gets the result so far after each seed, e.g. to save it)."""
    from carv_adapt.bench.cost_clock import machine_description
    from carv_adapt.workloads.attribution import AttributionConfig, AttributionWorkload, mean_spearman

    t_start = time.perf_counter()
    M = s.num_train + s.num_queries
    teacher, runs, references = None, [], []
    for seed in s.seeds:
        base = dict(
            num_train=s.num_train,
            num_queries=s.num_queries,
            proj_dim=s.proj_dim,
            batch_size=s.batch_size,
            reference_outer=s.reference_outer,
            reference_inner=s.reference_inner,
            seed=seed,
            **s.config,
        )
        wls = {}
        for crn in sorted(set(s.crn) | {True}):
            wls[crn] = AttributionWorkload(AttributionConfig(**base, common_random_numbers=crn), teacher=teacher)
            teacher = wls[crn].teacher
        t0 = time.perf_counter()
        ref, reliability = _reference(s, wls[True], seed)
        references.append({"seed": seed, "reliability": reliability, "wall_seconds": time.perf_counter() - t0})
        say(f"seed {seed}: reference halves agree at Spearman {reliability:.3f}")

        def spearman(scores: torch.Tensor, ref: torch.Tensor = ref) -> float:
            with warnings.catch_warnings():  # an example not yet estimated has a zero feature: ties
                warnings.filterwarnings("ignore", message="An input array is constant")
                return mean_spearman(scores, ref)

        for a, arm in enumerate(s.arms):
            for crn in s.crn:
                wl = wls[crn]
                ctrl, policy = _sampler(arm, s, wl, 100 * seed + a, M)
                t0 = time.perf_counter()
                run = wl.run_to_compute(
                    lambda N, K, probed: float(N * K),
                    float(s.evals_per_example * M),
                    s.fractions,
                    {"spearman": spearman},
                    controller=ctrl,
                    policy=policy,
                    generator_seed=100 * seed + 50 + a,
                )
                wall = time.perf_counter() - t0
                recs = run.records[: run.checkpoints[-1].step]
                row = {
                    "arm": arm,
                    "crn": crn,
                    "seed": seed,
                    "curve": [
                        {"evals_per_example": c.compute / M, "fraction": c.fraction, "spearman": c.scores["spearman"]}
                        for c in run.checkpoints
                    ],
                    "mean_K": sum(r.K for r in recs) / max(len(recs), 1),
                    "final_K": recs[-1].K if recs else None,
                    "steps": len(recs),
                    "measured_seconds": run.checkpoints[-1].seconds,
                    "wall_seconds": wall,
                }
                runs.append(row)
                last = row["curve"][-1]
                say(
                    f"seed {seed} {arm:18s} crn={crn!s:5s}: Spearman {last['spearman']:.3f} at "
                    f"{last['evals_per_example']:.0f} evals/example, mean K {row['mean_K']:.1f} ({wall:.0f} s)"
                )
        if on_seed is not None:
            on_seed(_result(s, references, runs, time.perf_counter() - t_start, machine_description()))
    return _result(s, references, runs, time.perf_counter() - t_start, machine_description())


def _result(s: CurveSettings, references: list, runs: list, wall: float, machine: str) -> dict[str, Any]:
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "machine": machine,
        "labels": {a: LABELS[a] for a in s.arms},
        "references": references,
        "runs": runs,
        "wall_seconds": wall,
    }
    result["summary"] = summarize(result)
    return result


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of the same settings on different seeds (e.g. run side by side, one process per seed);
    the seeds are those each result ran; ``wall_seconds`` is the sum of the parts'."""
    ignore = {"seeds", "out"}
    first = {k: v for k, v in results[0]["settings"].items() if k not in ignore}
    seeds: list[int] = []
    for r in results:
        if {k: v for k, v in r["settings"].items() if k not in ignore} != first:
            raise ValueError("merge needs results of the same settings (seeds aside)")
        done = [x["seed"] for x in r["references"]]  # the seeds it ran (a stopped run saved fewer than asked)
        if set(done) & set(seeds):
            raise ValueError(f"seed(s) {sorted(set(done) & set(seeds))} appear in two results")
        seeds += done
    out = {
        **results[0],
        "settings": {**results[0]["settings"], "seeds": sorted(seeds)},
        "references": [x for r in results for x in r["references"]],
        "runs": [x for r in results for x in r["runs"]],
        "wall_seconds": sum(r["wall_seconds"] for r in results),
    }
    out["summary"] = summarize(out)
    return out


def _interval(xs: Sequence[float]) -> tuple[float, float, float]:
    """Mean and a 95 % Student-t interval over seeds (the mean alone for one seed)."""
    from scipy.stats import t

    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    h = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - h, mean + h


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per arm, CRN setting and budget fraction: Spearman over seeds (mean, 95 % interval), the evaluations per
    example actually spent, and the paired gain of common random numbers (CRN minus independent, same seed)."""
    runs = result["runs"]
    out = []
    keys = sorted({(r["arm"], r["crn"]) for r in runs}, key=lambda k: (ARMS.index(k[0]), k[1]))
    for arm, crn in keys:
        rows = sorted((r for r in runs if r["arm"] == arm and r["crn"] == crn), key=lambda r: r["seed"])
        for i, point in enumerate(rows[0]["curve"]):
            values = [r["curve"][i]["spearman"] for r in rows]
            mean, lo, hi = _interval(values)
            entry = {
                "arm": arm,
                "crn": crn,
                "fraction": point["fraction"],
                "evals_per_example": sum(r["curve"][i]["evals_per_example"] for r in rows) / len(rows),
                "spearman": mean,
                "lo": lo,
                "hi": hi,
                "seeds": len(rows),
                "per_seed": values,
            }
            if crn:
                indep = {r["seed"]: r for r in runs if r["arm"] == arm and not r["crn"]}
                diffs = [
                    r["curve"][i]["spearman"] - indep[r["seed"]]["curve"][i]["spearman"]
                    for r in rows
                    if r["seed"] in indep
                ]
                if diffs:
                    entry["crn_gain"], entry["crn_gain_lo"], entry["crn_gain_hi"] = _interval(diffs)
            out.append(entry)
    return out


def _fmt(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.3f}" if lo == hi else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown(result: dict[str, Any]) -> list[str]:
    """The table: one row per arm and CRN setting, one column per budget fraction (Spearman, 95 % interval over
    seeds), and the paired CRN gain at the full budget."""
    from carv_adapt.bench.markdown import md_table

    summary = result["summary"]
    fractions = sorted({e["fraction"] for e in summary})
    evals = {
        f: sum(e["evals_per_example"] for e in summary if e["fraction"] == f)
        / sum(1 for e in summary if e["fraction"] == f)
        for f in fractions
    }
    header = ["policy", "draws", *(f"{evals[f]:.0f} evals/example" for f in fractions), "CRN gain (full budget)"]
    rows = []
    for arm in [a for a in ARMS if any(e["arm"] == a for e in summary)]:
        for crn in (False, True):
            cells = [e for e in summary if e["arm"] == arm and e["crn"] == crn]
            if not cells:
                continue
            last = cells[-1]
            gain = _fmt(last["crn_gain"], last["crn_gain_lo"], last["crn_gain_hi"]) if "crn_gain" in last else "-"
            rows.append(
                [result["labels"][arm], "CRN" if crn else "independent"]
                + [_fmt(e["spearman"], e["lo"], e["hi"]) for e in cells]
                + [gain]
            )
    return md_table(header, rows)


def plot(result: dict[str, Any], path: Path) -> None:
    """Spearman against teacher evaluations per example, one colour per arm, solid with common random numbers,
    dashed with independent draws; bars: 95 % intervals over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    summary = result["summary"]
    for a, arm in enumerate(a for a in ARMS if any(e["arm"] == a for e in summary)):
        for crn in (False, True):
            pts = [e for e in summary if e["arm"] == arm and e["crn"] == crn]
            if not pts:
                continue
            x = [e["evals_per_example"] for e in pts]
            y = [e["spearman"] for e in pts]
            err = [[e["spearman"] - e["lo"] for e in pts], [e["hi"] - e["spearman"] for e in pts]]
            label = f"{result['labels'][arm]}, {'CRN' if crn else 'independent'}"
            ax.errorbar(
                x, y, yerr=err, color=f"C{a}", ls="-" if crn else "--", marker="o", ms=3, capsize=2, label=label
            )
    ax.set_xlabel("teacher evaluations per example")
    ax.set_ylabel("Spearman with the reference (mean over queries)")
    seeds = len(result["settings"]["seeds"])
    ax.set_title(f"Attribution: Spearman vs teacher evaluations ({seeds} seed{'s' * (seeds > 1)}, 95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/bench"), help="folder for the JSON and the PNG")
    p.add_argument("--quick", action="store_true", help="a smoke test's sizes (not a measurement)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--from-json", type=Path, default=None, help="re-render the table and PNG of a saved result")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="merge results run on different seeds")
    args = p.parse_args(argv)
    if args.merge is not None:
        result = merge([json.loads(path.read_text()) for path in args.merge])
        args.out.mkdir(parents=True, exist_ok=True)
        args.from_json = args.out / "attribution_curve.json"
        args.from_json.write_text(json.dumps(result, indent=1))
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text())
        result["summary"] = summarize(result)
        args.from_json.write_text(json.dumps(result, indent=1))
        plot(result, args.from_json.with_suffix(".png"))
        print("\n".join(markdown(result)))
        return 0
    torch.set_num_threads(1)
    kw: dict[str, Any] = {"out": args.out}
    if args.seeds:
        kw["seeds"] = tuple(args.seeds)
    s = CurveSettings.smoke(**kw) if args.quick else CurveSettings(**kw)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "attribution_curve_quick" if s.quick else "attribution_curve"

    def save(partial: dict[str, Any]) -> None:  # after every seed: a long run that is stopped keeps what it did
        (args.out / f"{name}.json").write_text(json.dumps(partial, indent=1))

    result = attribution_curve(s, say=lambda m: print(m, flush=True), on_seed=save)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / f"{name}.png")
    print("\n".join(markdown(result)))
    print(f"\nwrote {args.out / name}.json and .png ({result['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
