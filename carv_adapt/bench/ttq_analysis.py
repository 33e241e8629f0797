"""Time to quality from quality-against-compute curves: monotone envelopes, the compute each arm needs to reach
the baseline's quality, intervals over seeds, the Markdown tables and the figure of :mod:`carv_adapt.bench.ttq`.

Quality is compared at equal compute (docs/theory.md §10): the lower variance of a policy is worth something only
when it buys quality sooner on the same compute clock (§3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["envelope", "compute_to_reach", "interval", "analyze", "markdown", "plot"]

#: quality metrics: name -> (label, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "log_p": ("mean log p(digit) over 16 views", True),
    "pixel_mse": ("pixel MSE to the reference renders", False),
}


def envelope(values: Sequence[float], higher_is_better: bool = True) -> np.ndarray:
    """The best quality reached so far at each checkpoint (running max, or running min when lower is better)."""
    v = np.asarray(values, dtype=float)
    return np.maximum.accumulate(v) if higher_is_better else np.minimum.accumulate(v)


def compute_to_reach(
    computes: Sequence[float], values: Sequence[float], target: float, higher_is_better: bool = True
) -> float:
    """The least compute at which the piecewise-linear monotone envelope of ``(computes, values)`` reaches
    ``target``; NaN if it never does. ``computes`` must be non-decreasing."""
    x = np.asarray(computes, dtype=float)
    e = envelope(values, higher_is_better)
    if not higher_is_better:
        e, target = -e, -target
    hit = np.nonzero(e >= target)[0]
    if len(hit) == 0:
        return math.nan
    i = int(hit[0])
    if i == 0 or e[i] == e[i - 1]:
        return float(x[i])
    return float(x[i - 1] + (target - e[i - 1]) / (e[i] - e[i - 1]) * (x[i] - x[i - 1]))


def interval(samples: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and Student-t interval over the finite samples (``n`` of them); NaN bounds below two samples."""
    from scipy import stats

    x = np.asarray([s for s in samples if s is not None and math.isfinite(s)], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    m = float(x.mean())
    if n < 2:
        return {"mean": m, "lo": math.nan, "hi": math.nan, "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


def _curve(run: dict[str, Any], metric: str) -> tuple[list[float], list[float]]:
    pts = run["curve"]
    return [p["compute_fraction"] for p in pts], [p[metric] for p in pts]


def _value_at(run: dict[str, Any], metric: str, fraction: float) -> float:
    for p in run["curve"]:
        if abs(p["fraction"] - fraction) < 1e-12:
            return float(p[metric])
    raise KeyError(f"no checkpoint at fraction {fraction} in run {run['arm']} seed {run['seed']}")


def analyze(
    runs: list[dict[str, Any]], arms: Sequence[str], seeds: Sequence[int], checkpoints: Sequence[float]
) -> dict[str, Any]:
    """Per metric: for each checkpoint ``f < 1``, the compute (fraction of the baseline's budget) each arm needs to
    reach the baseline's envelope at ``f``, same seed, and the speedup ``baseline's / arm's``; at ``f = 1`` the
    quality at equal compute and its paired difference to the baseline. Intervals over seeds."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    out: dict[str, Any] = {}
    for metric, (_, hi) in METRICS.items():
        ttq = []
        for f in [c for c in checkpoints if c < 1.0]:
            row: dict[str, Any] = {"fraction": f, "arms": {}}
            base_need: dict[int, float] = {}
            for arm in arms:
                need, speed = [], []
                for seed in seeds:
                    base = by[("baseline", seed)]
                    at = [abs(p["fraction"] - f) < 1e-12 for p in base["curve"]].index(True)
                    target = float(envelope(_curve(base, metric)[1], hi)[at])
                    x, q = _curve(by[(arm, seed)], metric)
                    n = compute_to_reach(x, q, target, hi)
                    if arm == "baseline":
                        base_need[seed] = n
                    need.append(n)
                    speed.append(base_need.get(seed, math.nan) / n if n > 0 else math.nan)
                row["arms"][arm] = {
                    "compute_fraction": interval(need),
                    "speedup": interval(speed),
                    "reached": int(sum(math.isfinite(n) for n in need)),
                    "per_seed": need,
                }
            ttq.append(row)
        final: dict[str, Any] = {}
        for arm in arms:
            q = [_value_at(by[(arm, s)], metric, 1.0) for s in seeds]
            d = [qi - _value_at(by[("baseline", s)], metric, 1.0) for qi, s in zip(q, seeds)]
            final[arm] = {"quality": interval(q), "diff_vs_baseline": interval(d), "per_seed": q}
        out[metric] = {"label": METRICS[metric][0], "higher_is_better": hi, "ttq": ttq, "final": final}
    return out


def _fmt(st: dict[str, float], digits: int = 2) -> str:
    if not math.isfinite(st["mean"]):
        return "-"
    if not math.isfinite(st["lo"]):
        return f"{st['mean']:.{digits}f}"
    return f"{st['mean']:.{digits}f} [{st['lo']:.{digits}f}, {st['hi']:.{digits}f}]"


def markdown(result: dict[str, Any]) -> str:
    """The report's tables: time to quality and final quality per metric, then cost and wall clock per arm."""
    s, clock, labels = result["settings"], result["clock"], result["arm_labels"]
    lines = [
        f"# Time to quality: SDS-3D, max_angle_deg {s['max_angle_deg']:g}, {len(s['seeds'])} seeds",
        "",
        f"Budget: the baseline's {s['steps']} steps = {result['budget']:.2f} s on the cost clock "
        f"(c_0 {1e3 * clock['c_0']:.2f} ms, c_out {1e3 * clock['c_out']:.2f} ms, c_in {1e3 * clock['c_in']:.2f} ms, "
        f"probe {1e3 * clock['probe_0']:.2f} + {1e3 * clock['probe_out']:.2f} N "
        f"+ {1e3 * clock.get('probe_quad', 0):.2f} N^2 ms). Reference scene: "
        f"{result['reference']['steps']} baseline steps (seed {result['reference']['seed']}), "
        f"log p {result['reference']['log_p']:.3f}. Intervals: 95 % Student t over seeds.",
        "",
    ]
    for a in result["analysis"].values():
        better = "higher" if a["higher_is_better"] else "lower"
        fr = [r["fraction"] for r in a["ttq"]]
        lines += [
            f"## {a['label']} ({better} is better)",
            "",
            "Compute (fraction of the baseline's budget) to reach the baseline's quality at "
            + ", ".join(f"{100 * f:g} %" for f in fr)
            + " of its budget (speedup = baseline's compute / arm's, paired by seed; reached = seeds that got "
            "there within the budget), and the quality at equal compute.",
            "",
            "| arm | "
            + " | ".join(f"to baseline@{100 * f:g}% (speedup, reached)" for f in fr)
            + " | quality at equal compute | vs baseline |",
            "|---|" + "---|" * (len(fr) + 2),
        ]
        for arm, fin in a["final"].items():
            cells = []
            for r in a["ttq"]:
                c = r["arms"][arm]
                cells.append(f"{_fmt(c['compute_fraction'])} (x{_fmt(c['speedup'])}, {c['reached']}/{len(s['seeds'])})")
            d = "-" if arm == "baseline" else _fmt(fin["diff_vs_baseline"], 3)
            lines.append(f"| {labels[arm]} | " + " | ".join(cells) + f" | {_fmt(fin['quality'], 3)} | {d} |")
        lines.append("")
    lines += [
        "## Cost and wall clock",
        "",
        "Means over seeds; final K per seed. The probe share is the compute the split-half probes were charged. "
        "Measured stage seconds and wall seconds (scoring excluded) stand beside the cost clock.",
        "",
        "| arm | steps | final K | mean K | probed steps | probe share | cost clock s | measured stage s | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in s["arms"]:
        rs = [r for r in result["runs"] if r["arm"] == arm]

        def m(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(np.mean([r[key] for r in rs]))

        lines.append(
            f"| {labels[arm]} | {m('steps'):.0f} | " + "/".join(str(r["final_K"]) for r in rs) + f" | {m('mean_K'):.1f}"
            f" | {m('probed_steps'):.0f} | {100 * m('probe_compute') / max(m('compute'), 1e-300):.0f} % | "
            f"{m('compute'):.2f} | {m('measured_seconds'):.2f} | {m('wall_seconds'):.2f} |"
        )
    lines += ["", f"Total wall time {result['wall_seconds'] / 60:.1f} min; `{result['command']}`.", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any]) -> Any:
    """Quality against cost-clock compute (fraction of the baseline's budget), mean and 95 % band per arm."""
    import matplotlib.pyplot as plt

    metrics = list(result["analysis"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for arm in result["settings"]["arms"]:
            rs = [r for r in result["runs"] if r["arm"] == arm]
            fr = [p["fraction"] for p in rs[0]["curve"]]
            x = np.array([[p["compute_fraction"] for p in r["curve"]] for r in rs]).mean(0)
            stats = [interval([_value_at(r, metric, f) for r in rs]) for f in fr]
            m = np.array([st["mean"] for st in stats])
            lo = np.array([st["lo"] if math.isfinite(st["lo"]) else st["mean"] for st in stats])
            hi = np.array([st["hi"] if math.isfinite(st["hi"]) else st["mean"] for st in stats])
            (line,) = ax.plot(x, m, label=result["arm_labels"][arm])
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
        a = result["analysis"][metric]
        ax.set_xlabel("compute (fraction of the baseline's budget, cost clock)")
        ax.set_ylabel(a["label"] + (" (higher is better)" if a["higher_is_better"] else " (lower is better)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
