"""The benchmark's outputs: markdown tables and figures from the JSON-ready result (figures are returned,
the caller saves them)."""

from __future__ import annotations

import math
from typing import Any

from carv_adapt.bench.ablation import VARIANTS

__all__ = ["markdown_report", "plot_ecm", "plot_sweep", "plot_calibration"]


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return fmt.format(x)


def _ecm_cell(row: dict[str, Any]) -> str:
    lo, hi = row["ecm_ci90"]
    return f"{row['ecm']:.2f} [{lo:.2f}, {hi:.2f}]" if row["variant"] != "baseline" else "1"


def ablation_table(result: dict[str, Any]) -> list[str]:
    """Markdown: one row per workload x checkpoint, one column per variant (ECM [90 % CI], K)."""
    head = "| workload | step | " + " | ".join(VARIANTS) + " | adaptive / oracle | c_out/c_in | σ_W²/σ_B² |"
    lines = [head, "|" + "---|" * (len(VARIANTS) + 5)]
    for w in result["ablation"]:
        for c in w["checkpoints"]:
            by = {r["variant"]: r for r in c["variants"]}
            cells = [f"{_ecm_cell(by[v])} (K={by[v]['K']})" if v in by else "-" for v in VARIANTS]
            ratio = by["adaptive"]["ecm"] / by["oracle"]["ecm"] if by["oracle"]["ecm"] > 0 else math.nan
            p = c["pilot"]
            lines.append(
                f"| {w['workload']} | {c['step']}/{w['training']['steps']} | "
                + " | ".join(cells)
                + f" | {_f(ratio)} | {_f(p['cost_ratio'], '{:.1f}')} | {_f(p['ratio_w_b'], '{:.1f}')} |"
            )
    return lines


def calibration_table(result: dict[str, Any]) -> list[str]:
    """Markdown: predicted W (pilot variance model; the controller's own ECM) against measured."""
    lines = [
        "| workload | step | variant | measured W | predicted W (pilot model) | predicted / measured |",
        "|---|---|---|---|---|---|",
    ]
    for w in result["ablation"]:
        for c in w["checkpoints"]:
            for r in c["variants"]:
                ratio = r["W_predicted"] / r["W"] if r["W"] > 0 else math.nan
                lines.append(
                    f"| {w['workload']} | {c['step']} | {r['variant']} | {r['W']:.3g} | {r['W_predicted']:.3g} "
                    f"| {_f(ratio)} |"
                )
    lines += [
        "",
        "| workload | step | controller K | controller's predicted ECM | measured ECM of its policy |",
        "|---|---|---|---|---|",
    ]
    for w in result["ablation"]:
        for c in w["checkpoints"]:
            by = {r["variant"]: r for r in c["variants"]}
            ctl = c["controller"]
            lines.append(
                f"| {w['workload']} | {c['step']} | {ctl['K']} | {_f(ctl['predicted_ecm'])} "
                f"| {_f(by['adaptive']['ecm'])} |"
            )
    return lines


def overhead_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| workload | ms per step | controller ms per step | controller share | split-half probe share | refits |",
        "|---|---|---|---|---|---|",
    ]
    for w in result["ablation"]:
        o = w["overhead"]
        lines.append(
            f"| {w['workload']} | {o['ms_per_step']:.1f} | {o['controller_ms_per_step']:.2f} "
            f"| {100 * o['controller_fraction']:.2f} % | {100 * o['probe_fraction']:.1f} % | {o['refits']} |"
        )
    return lines


def e2e_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| workload | seed | metric | baseline (steps) | adaptive (steps, final K) | compute s (base / adaptive) |",
        "|---|---|---|---|---|---|",
    ]
    for w in result.get("e2e", []):
        for r in w["seeds"]:
            lines.append(
                f"| {w['workload']} | {r['seed']} | {w['quality_metric']} | {r['baseline_quality']:.3f} "
                f"({r['baseline_steps']}) | {r['adaptive_quality']:.3f} "
                f"({r['adaptive_steps']}, K={r['adaptive_final_K']}) "
                f"| {r['baseline_compute_s']:.1f} / {r['adaptive_compute_s']:.1f} |"
            )
    return lines


def sweep_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| render | samples/ray | c_out ms | c_in ms | c_out/c_in | K reuse / CARV | ECM reuse [90 % CI] "
        "| ECM CARV [90 % CI] | predicted reuse / CARV |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("sweep", {}).get("rows", []):
        lines.append(
            f"| {r['resolution']} | {r['samples_per_ray']} | {1e3 * r['c_out']:.1f} | {1e3 * r['c_in']:.2f} "
            f"| {r['cost_ratio']:.1f} | {r['K_reuse']} / {r['K_carv']} "
            f"| {r['ecm_reuse']:.2f} [{r['ecm_reuse_ci90'][0]:.2f}, {r['ecm_reuse_ci90'][1]:.2f}] "
            f"| {r['ecm_carv']:.2f} [{r['ecm_carv_ci90'][0]:.2f}, {r['ecm_carv_ci90'][1]:.2f}] "
            f"| {r['predicted_ecm_reuse']:.2f} / {r['predicted_ecm_carv']:.2f} |"
        )
    return lines


def scaling_table_md(result: dict[str, Any]) -> list[str]:
    lines = [
        "| bins | dim | N x K | plan ms | observe ms | refit ms | peak extra MB | contributions MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("scaling", []):
        lines.append(
            f"| {r['bins']} | {r['dim']} | {r['N']} x {r['K']} | {r['plan_ms']:.3f} | {r['observe_ms']:.3f} "
            f"| {r['refit_ms']:.2f} | {r['peak_extra_mb']:.1f} | {r['contributions_mb']:.2f} |"
        )
    return lines


def markdown_report(result: dict[str, Any]) -> str:
    """The whole report as markdown (the README carries its ablation table)."""
    s = result["settings"]
    parts = [
        "# carv-adapt bench",
        "",
        f"Command: `{result['command']}`; wall time {result['wall_seconds'] / 60:.1f} min on "
        f"{result['machine']}. ECM = W_baseline / W with W = tr Cov(G_hat) x measured seconds per estimate, "
        f"{s['replications']} interleaved replications per policy at frozen parameters; 90 % BCa bootstrap "
        "intervals over replications.",
        "",
        "## ECM ablation",
        "",
        *ablation_table(result),
        "",
        "## Calibration",
        "",
        *calibration_table(result),
        "",
        "## Controller overhead (adaptive training run)",
        "",
        *overhead_table(result),
    ]
    if result.get("e2e"):
        parts += ["", "## End to end at equal compute", "", *e2e_table(result)]
    if result.get("sweep"):
        parts += ["", "## SDS-3D cost sweep", "", *sweep_table(result)]
    if result.get("scaling"):
        parts += ["", "## Controller scaling", "", *scaling_table_md(result)]
    return "\n".join(parts) + "\n"


def plot_ecm(result: dict[str, Any]) -> Any:
    """ECM per variant (bars, 90 % CI) per checkpoint, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    works = result["ablation"]
    fig, axes = plt.subplots(1, len(works), figsize=(5.2 * len(works), 3.6), squeeze=False)
    for ax, w in zip(axes[0], works):
        n_c = len(w["checkpoints"])
        width = 0.8 / len(VARIANTS)
        for j, v in enumerate(VARIANTS):
            xs, ys, lo, hi = [], [], [], []
            for i, c in enumerate(w["checkpoints"]):
                r = next(r for r in c["variants"] if r["variant"] == v)
                xs.append(i + (j - len(VARIANTS) / 2 + 0.5) * width)
                ys.append(r["ecm"])
                lo.append(max(r["ecm"] - r["ecm_ci90"][0], 0))
                hi.append(max(r["ecm_ci90"][1] - r["ecm"], 0))
            ax.bar(xs, ys, width, yerr=[lo, hi], label=v, capsize=2)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(n_c))
        ax.set_xticklabels([f"step {c['step']}" for c in w["checkpoints"]])
        ax.set_title(w["workload"])
        ax.set_ylabel("ECM (W_baseline / W)")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_sweep(sweep: dict[str, Any]) -> Any:
    """Measured ECM against measured ``c_out / c_in`` with the variance model's predicted curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    cv = sweep["curve"]
    ax.plot(cv["cost_ratio"], cv["reuse"], "C0-", label="predicted: reuse only")
    ax.plot(cv["cost_ratio"], cv["carv"], "C1-", label="predicted: reuse + IS")
    for key, col, lab in (("reuse", "C0", "measured: reuse only"), ("carv", "C1", "measured: CARV (IS + strat.)")):
        xs = [r["cost_ratio"] for r in sweep["rows"]]
        ys = [r[f"ecm_{key}"] for r in sweep["rows"]]
        lo = [max(r[f"ecm_{key}"] - r[f"ecm_{key}_ci90"][0], 0) for r in sweep["rows"]]
        hi = [max(r[f"ecm_{key}_ci90"][1] - r[f"ecm_{key}"], 0) for r in sweep["rows"]]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color=col, label=lab, capsize=3)
    for r in sweep["rows"]:
        ax.annotate(f"{r['resolution']}/{r['samples_per_ray']}", (r["cost_ratio"], r["ecm_carv"]), fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("measured c_out / c_in")
    ax.set_ylabel("ECM")
    ax.set_title("SDS-3D: when does CARV pay off?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_calibration(result: dict[str, Any]) -> Any:
    """Predicted against measured W for every variant and checkpoint (log-log, the diagonal is exact)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for i, w in enumerate(result["ablation"]):
        base = [c["variants"][0]["W"] for c in w["checkpoints"]]
        xs = [r["W"] / b for c, b in zip(w["checkpoints"], base) for r in c["variants"]]
        ys = [r["W_predicted"] / b for c, b in zip(w["checkpoints"], base) for r in c["variants"]]
        ax.scatter(xs, ys, s=14, color=f"C{i}", label=w["workload"])
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured W / measured baseline W")
    ax.set_ylabel("predicted W / measured baseline W")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
