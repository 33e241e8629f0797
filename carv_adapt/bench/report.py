"""The benchmark's outputs: markdown tables and figures from the JSON-ready result (figures are returned,
the caller saves them), and the README's benchmark blocks, regenerated from ``bench.json``:

    python -m carv_adapt.bench.report --readme README.md --bench docs/bench/bench.json

Every table goes through :func:`md_table` (cells escaped by :func:`md_cell`) and is checked by
:func:`check_markdown_tables`; the README is only ever changed between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` markers (:func:`update_readme`)."""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from carv_adapt.bench.ablation import VARIANTS
from carv_adapt.errors import ConfigError

__all__ = [
    "markdown_report",
    "plot_ecm",
    "plot_sweep",
    "plot_calibration",
    "md_cell",
    "md_table",
    "check_markdown_tables",
    "README_SECTIONS",
    "readme_sections",
    "render_readme",
    "update_readme",
    "main",
]


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return fmt.format(x)


# ---------------------------------------------------------------------- markdown tables
def md_cell(x: Any) -> str:
    """One table cell: the text of ``x`` on one line, with every ``|`` escaped as ``\\|``."""
    return " ".join(str(x).splitlines()).replace("|", "\\|")


def md_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table (header, delimiter row, one line per row); every cell goes through :func:`md_cell`."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(md_cell(c) for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def _cells(row: str) -> list[str]:
    """A table row's cells: split at ``|`` not escaped by a backslash; the outer pipes delimit, not cells."""
    s = row.strip()
    cells: list[str] = []
    cur: list[str] = []
    escaped = trailing = False
    for ch in s:
        trailing = False
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == "|":
            cells.append("".join(cur))
            cur = []
            trailing = True
        else:
            cur.append(ch)
    if not trailing:
        cells.append("".join(cur))
    return cells[1:] if s.startswith("|") else cells


_DELIMITER_CELL = re.compile(r"^\s*:?-+:?\s*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _is_delimiter_row(line: str) -> bool:
    s = line.strip()
    return s.startswith("|") and all(_DELIMITER_CELL.match(c) for c in _cells(s))


def check_markdown_tables(text: str) -> list[str]:
    """Problems with the markdown tables in ``text`` (empty when all are well formed), one string each naming
    the line: a delimiter row or body row whose number of cells (counting only unescaped ``|``) differs from
    the header's, a row with whitespace before its first ``|``, a ``|`` row that belongs to no table (no
    header and delimiter row above it). Fenced code blocks are skipped."""
    problems: list[str] = []
    lines = text.splitlines()
    fence: str | None = None
    n_header: int | None = None  # cells in the current table's header; None outside a table
    for i, line in enumerate(lines):
        no = i + 1
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(1).startswith(fence):
                fence = None
            continue
        if m:
            fence, n_header = m.group(1), None
            continue
        stripped = line.lstrip()
        if not stripped.startswith("|") or (n_header is None and len(line) - len(stripped) >= 4):
            n_header = None  # a blank line or text ends a table; 4+ spaces outside a table is indented code
            continue
        if stripped != line:
            problems.append(f"line {no}: table row has whitespace before its first '|': {line!r}")
        n = len(_cells(line))
        if n_header is None:
            if i + 1 < len(lines) and _is_delimiter_row(lines[i + 1]):
                n_header = n
            else:
                problems.append(f"line {no}: '|' row outside a table (no header and delimiter row): {line!r}")
            continue
        if n != n_header:
            what = "delimiter row" if _is_delimiter_row(line) else "row"
            problems.append(f"line {no}: {what} has {n} cells, the header has {n_header}: {line!r}")
    return problems


def _checked(name: str, lines: list[str]) -> str:
    text = "\n".join(lines)
    problems = check_markdown_tables(text)
    if problems:
        raise ConfigError(f"generated block {name!r} has malformed markdown tables: " + "; ".join(problems))
    return text


# ---------------------------------------------------------------------- bench.md
def _ecm_cell(row: dict[str, Any]) -> str:
    lo, hi = row["ecm_ci90"]
    return f"{row['ecm']:.2f} [{lo:.2f}, {hi:.2f}]" if row["variant"] != "baseline" else "1"


def _ratio_w_b(x: Any) -> str:
    """``sigma_W^2 / sigma_B^2`` for the README: whole numbers from 10 up, one decimal below (618, 28, 4.0, 0.5)."""
    return _f(x, "{:.0f}" if isinstance(x, int | float) and abs(x) >= 10 else "{:.1f}")


def ablation_table(
    result: dict[str, Any],
    variants: Sequence[str] = VARIANTS,
    without_k: Sequence[str] = (),
    ratio_w_b: Callable[[Any], str] | None = None,
) -> list[str]:
    """Markdown: one row per workload x checkpoint, one column per variant (ECM [90 % CI], K unless the variant
    is in ``without_k``), the adaptive / oracle ratio and the pilot's cost and variance ratios."""
    fmt_w_b = ratio_w_b or (lambda x: _f(x, "{:.1f}"))
    rows = []
    for w in result["ablation"]:
        for c in w["checkpoints"]:
            by = {r["variant"]: r for r in c["variants"]}
            cells = [
                "-" if v not in by else _ecm_cell(by[v]) if v in without_k else f"{_ecm_cell(by[v])} (K={by[v]['K']})"
                for v in variants
            ]
            p = c["pilot"]
            rows.append(
                [f"{w['workload']}", f"{c['step']}/{w['training']['steps']}", *cells, _f(_adaptive_over_oracle(c))]
                + [_f(p["cost_ratio"], "{:.1f}"), fmt_w_b(p["ratio_w_b"])]
            )
    return md_table(["workload", "step", *variants, "adaptive / oracle", "c_out/c_in", "σ_W²/σ_B²"], rows)


def _adaptive_over_oracle(c: dict[str, Any]) -> float:
    by = {r["variant"]: r for r in c["variants"]}
    if "adaptive" not in by or "oracle" not in by or not by["oracle"]["ecm"] > 0:
        return math.nan
    return by["adaptive"]["ecm"] / by["oracle"]["ecm"]


def calibration_table(result: dict[str, Any]) -> list[str]:
    """Markdown: predicted W (pilot variance model; the controller's own ECM) against measured."""
    rows = []
    for w in result["ablation"]:
        for c in w["checkpoints"]:
            for r in c["variants"]:
                ratio = r["W_predicted"] / r["W"] if r["W"] > 0 else math.nan
                rows.append(
                    [w["workload"], c["step"], r["variant"], f"{r['W']:.3g}", f"{r['W_predicted']:.3g}", _f(ratio)]
                )
    lines = md_table(
        ["workload", "step", "variant", "measured W", "predicted W (pilot model)", "predicted / measured"], rows
    )
    rows = []
    for w in result["ablation"]:
        for c in w["checkpoints"]:
            by = {r["variant"]: r for r in c["variants"]}
            ctl = c["controller"]
            rows.append([w["workload"], c["step"], ctl["K"], _f(ctl["predicted_ecm"]), _f(by["adaptive"]["ecm"])])
    header = ["workload", "step", "controller K", "controller's predicted ECM", "measured ECM of its policy"]
    return [*lines, "", *md_table(header, rows)]


def overhead_table(result: dict[str, Any]) -> list[str]:
    rows = []
    for w in result["ablation"]:
        o = w["overhead"]
        rows.append(
            [w["workload"], f"{o['ms_per_step']:.1f}", f"{o['controller_ms_per_step']:.2f}"]
            + [f"{100 * o['controller_fraction']:.2f} %", f"{100 * o['probe_fraction']:.1f} %", o["refits"]]
        )
    header = ["workload", "ms per step", "controller ms per step", "controller share", "split-half probe share"]
    return md_table([*header, "refits"], rows)


def e2e_table(result: dict[str, Any]) -> list[str]:
    rows = []
    for w in result.get("e2e", []):
        for r in w["seeds"]:
            rows.append(
                [w["workload"], r["seed"], w["quality_metric"], f"{r['baseline_quality']:.3f} ({r['baseline_steps']})"]
                + [f"{r['adaptive_quality']:.3f} ({r['adaptive_steps']}, K={r['adaptive_final_K']})"]
                + [f"{r['baseline_compute_s']:.1f} / {r['adaptive_compute_s']:.1f}"]
            )
    header = ["workload", "seed", "metric", "baseline (steps)", "adaptive (steps, final K)"]
    return md_table([*header, "compute s (base / adaptive)"], rows)


def _ci(r: dict[str, Any], key: str) -> str:
    lo, hi = r[f"{key}_ci90"]
    return f"{r[key]:.2f} [{lo:.2f}, {hi:.2f}]"


def sweep_table(result: dict[str, Any]) -> list[str]:
    rows = [
        [r["resolution"], r["samples_per_ray"], f"{1e3 * r['c_out']:.1f}", f"{1e3 * r['c_in']:.2f}"]
        + [f"{r['cost_ratio']:.1f}", f"{r['K_reuse']} / {r['K_carv']}", _ci(r, "ecm_reuse"), _ci(r, "ecm_carv")]
        + [f"{r['predicted_ecm_reuse']:.2f} / {r['predicted_ecm_carv']:.2f}"]
        for r in result.get("sweep", {}).get("rows", [])
    ]
    header = ["render", "samples/ray", "c_out ms", "c_in ms", "c_out/c_in", "K reuse / CARV"]
    return md_table([*header, "ECM reuse [90 % CI]", "ECM CARV [90 % CI]", "predicted reuse / CARV"], rows)


def scaling_table_md(result: dict[str, Any]) -> list[str]:
    rows = [
        [r["bins"], r["dim"], f"{r['N']} x {r['K']}", f"{r['plan_ms']:.3f}", f"{r['observe_ms']:.3f}"]
        + [f"{r['refit_ms']:.2f}", f"{r['peak_extra_mb']:.1f}", f"{r['contributions_mb']:.2f}"]
        for r in result.get("scaling", [])
    ]
    header = ["bins", "dim", "N x K", "plan ms", "observe ms", "refit ms", "peak extra MB", "contributions MB"]
    return md_table(header, rows)


def markdown_report(result: dict[str, Any]) -> str:
    """The whole report as markdown (``bench.md``; the README's blocks are :func:`readme_sections`). Raises
    ``ConfigError`` if a table comes out malformed."""
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
    return _checked("bench.md", parts) + "\n"


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


# ---------------------------------------------------------------------- the README's benchmark blocks
#: The README's generated blocks (marker names), in the order they appear. ``wall_time`` is one line, used
#: inline (its markers sit inside a sentence); the others are blocks (each marker alone on its line).
README_SECTIONS = ("wall_time", "ablation", "targets", "calibration", "e2e", "sweep", "scaling")

#: The targets the README's targets table checks the run against.
ECM_TARGETS = {"sds3d": 3.0, "attribution": 2.5}
IS_STRAT_GAIN_TARGET = 0.25
ORACLE_RATIO_TARGET = 0.95
IDDPM_MULTIPLE_TARGET = 1.5
OVERHEAD_TARGET = 0.01

_NAMES = {"sds3d": "SDS-3D", "distill": "distillation", "attribution": "attribution"}


def _name(workload: str) -> str:
    return _NAMES.get(workload, workload)


def _sig(x: Any, n: int = 3) -> str:
    """``x`` with ``n`` significant figures in fixed point (0.998, 50.1, 76.0)."""
    if x is None or not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.{max(0, n - 1 - math.floor(math.log10(abs(x))))}f}"


def _span(values: Sequence[Any], fmt: Any = str) -> str:
    """``lo-hi`` of the formatted minimum and maximum, or the one value when they print the same."""
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _mb(x: Any) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x >= 1024:
        return f"{x / 1024:.3g} GB"
    return f"{x:.0f} MB" if x >= 1 else f"{x:.2f} MB"


def _ecm(c: dict[str, Any], variant: str) -> float:
    r = next((r for r in c["variants"] if r["variant"] == variant), None)
    return math.nan if r is None else r["ecm"]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _status(flags: Sequence[bool]) -> str:
    if all(flags):
        return "met"
    return "missed" if not any(flags) else f"met in {sum(flags)} of {len(flags)}"


def _per_workload(
    result: dict[str, Any],
    value: Callable[[dict[str, Any]], float],
    fmt: Callable[[float], str],
    target: float,
    suffix: str = "",
) -> tuple[list[str], list[str], list[bool]]:
    """Per workload: ``value(checkpoint)`` at every checkpoint joined by `` / ``, its status against ``target``
    (at least), and the flags of all checkpoints."""
    measured, status, flags = [], [], []
    for w in result["ablation"]:
        vs = [value(c) for c in w["checkpoints"]]
        ok = [v >= target for v in vs]
        measured.append(f"{_name(w['workload'])} " + " / ".join(fmt(v) for v in vs) + suffix)
        status.append(f"{_name(w['workload'])} {_status(ok)}")
        flags += ok
    return measured, status, flags


def _targets(result: dict[str, Any]) -> list[str]:
    rows = []
    for w in result["ablation"]:
        if w["workload"] in ECM_TARGETS:
            t = ECM_TARGETS[w["workload"]]
            vs = [_ecm(c, "adaptive") for c in w["checkpoints"]]
            when = " (early / mid / late)" if len(vs) == 3 and not rows else ""
            rows.append(
                [f"ECM >= {t:g} on {_name(w['workload'])}", "adaptive " + " / ".join(f"{v:.1f}" for v in vs) + when]
                + [_status([v >= t for v in vs])]
            )
    measured, status, _ = _per_workload(
        result,
        lambda c: _ratio(_ecm(c, "+strat"), _ecm(c, "reuse")) - 1,
        lambda v: f"{100 * v:+.0f} %",
        IS_STRAT_GAIN_TARGET,
    )
    rows.append(
        [f"IS + stratification add >= {100 * IS_STRAT_GAIN_TARGET:.0f} % over reuse", "; ".join(measured)]
        + ["; ".join(status)]
    )
    measured, _, flags = _per_workload(result, _adaptive_over_oracle, lambda v: f"{v:.2f}", ORACLE_RATIO_TARGET)
    rows.append([f"adaptive / oracle >= {ORACLE_RATIO_TARGET:g}", "; ".join(measured), _status(flags)])
    measured, status, _ = _per_workload(
        result,
        lambda c: _ratio(_ecm(c, "adaptive"), _ecm(c, "iddpm")),
        lambda v: f"{v:.1f}",
        IDDPM_MULTIPLE_TARGET,
        suffix="x",
    )
    rows.append([f"adaptive >= {IDDPM_MULTIPLE_TARGET:g}x the IDDPM resampler", "; ".join(measured), "; ".join(status)])
    o = [(w["workload"], w["overhead"]) for w in result["ablation"]]
    ok = [x["controller_fraction"] <= OVERHEAD_TARGET for _, x in o]
    status = _status(ok)
    if not all(ok):
        status += (
            f": {_span([x['controller_ms_per_step'] for _, x in o], '{:.2f}'.format)} ms per step against "
            f"{_span([x['ms_per_step'] for _, x in o], '{:.0f}'.format)} ms steps"
        )
    rows.append(
        [f"controller overhead <= {100 * OVERHEAD_TARGET:g} % of step time"]
        + [", ".join(f"{100 * x['controller_fraction']:.1f} % ({_name(wl)})" for wl, x in o), status]
    )
    return md_table(["target", "measured", "status"], rows)


def _calibration(result: dict[str, Any]) -> list[str]:
    ratios = [r["W_predicted"] / r["W"] for w in result["ablation"] for c in w["checkpoints"] for r in c["variants"]]
    ctl = "; ".join(
        f"{_name(w['workload'])} "
        + " / ".join(_f(c["controller"]["predicted_ecm"]) for c in w["checkpoints"])
        + " against "
        + " / ".join(_f(_ecm(c, "adaptive")) for c in w["checkpoints"])
        + (" measured" if i == 0 else "")
        for i, w in enumerate(result["ablation"])
    )
    text = (
        "**Calibration.** The pilot's variance model predicts the measured `W` of every policy at every "
        f"checkpoint within {min(ratios):.2f}-{max(ratios):.2f}x (median {statistics.median(ratios):.2f}; "
        "`calibration.png`, full table in `docs/bench/bench.md`). The controller's own predicted ECM, from its "
        f"online statistics: {ctl}."
    )
    # Wrapped like the README's prose, never inside ``a / b / c``.
    lines = textwrap.wrap(text.replace(" / ", "\0/\0"), 110, break_long_words=False, break_on_hyphens=False)
    return [line.replace("\0", " ") for line in lines]


def _e2e(result: dict[str, Any]) -> list[str]:
    rows = []
    for w in result.get("e2e", []):
        s = w["seeds"]
        rows.append(
            [f"{w['workload']}, {w['quality_metric']}", " / ".join(str(r["seed"]) for r in s)]
            + [
                " / ".join(_sig(r["baseline_quality"]) for r in s)
                + f" ({_span([r['baseline_steps'] for r in s])} steps)",
                " / ".join(_sig(r["adaptive_quality"]) for r in s)
                + f" ({_span([r['adaptive_steps'] for r in s])} steps, "
                f"K = {_span([r['adaptive_final_K'] for r in s])})",
            ]
        )
    return md_table(["workload", "seed", "baseline", "adaptive (steps, final K)"], rows)


def _sweep(result: dict[str, Any]) -> list[str]:
    rows = [
        [f"{r['resolution']} / {r['samples_per_ray']}", f"{1e3 * r['c_out']:.1f}", f"{1e3 * r['c_in']:.2f}"]
        + [f"{r['cost_ratio']:.1f}", f"{r['K_reuse']} / {r['K_carv']}", _ci(r, "ecm_reuse"), _ci(r, "ecm_carv")]
        + [f"{r['predicted_ecm_reuse']:.2f} / {r['predicted_ecm_carv']:.2f}"]
        for r in result["sweep"]["rows"]
    ]
    header = ["render / samples per ray", "c_out ms", "c_in ms", "c_out/c_in", "K reuse / CARV", "ECM reuse"]
    return md_table([*header, "ECM CARV", "predicted reuse / CARV"], rows)


def _scaling(result: dict[str, Any], gpu: Sequence[dict[str, Any]] | None) -> list[str]:
    cpu = {(r["bins"], r["dim"]): r for r in result.get("scaling", [])}
    dev = {(r["bins"], r["dim"]): r for r in gpu or []}
    cols = (("plan ms", "plan_ms", "{:.2f}".format), ("observe ms", "observe_ms", "{:.2f}".format))
    cols += (("refit ms", "refit_ms", "{:.1f}".format), ("peak extra memory", "peak_extra_mb", _mb))
    rows = []
    for key in sorted(cpu.keys() | dev.keys()):
        a, b = cpu.get(key), dev.get(key)
        cells = [key[0], f"{key[1]:,}".replace(",", " ")]
        for _, k, fmt in cols:
            x = "-" if a is None else fmt(a[k])
            cells.append(x if gpu is None else f"{x} / {'-' if b is None else fmt(b[k])}")
        cells.append(_mb((a or b)["contributions_mb"]))
        rows.append(cells)
    header = [c for c, _, _ in cols] if gpu is None else [f"{c} CPU / GPU" for c, _, _ in cols]
    return md_table(["bins", "contribution size", *header, "contributions"], rows)


def readme_sections(bench: dict[str, Any], gpu_scaling: Sequence[dict[str, Any]] | None = None) -> dict[str, str]:
    """The README's benchmark blocks, by marker name (:data:`README_SECTIONS`), from a ``bench.json`` result;
    ``gpu_scaling`` (rows of ``docs/gpu/scaling_cuda.json``, from ``benchmarks/gpu_check.sh``) adds a GPU
    figure to every scaling cell. Raises ``ConfigError`` if a generated table is malformed."""
    missing = "_Not in this benchmark run ({})._"
    blocks = {
        "wall_time": [f"**{bench['wall_seconds'] / 60:.1f} min**"],
        "ablation": ablation_table(
            bench, [v for v in VARIANTS if v != "baseline"], without_k=("iddpm",), ratio_w_b=_ratio_w_b
        ),
        "targets": _targets(bench),
        "calibration": _calibration(bench),
        "e2e": _e2e(bench) if bench.get("e2e") else [missing.format("`--seeds`")],
        "sweep": _sweep(bench) if bench.get("sweep") else [missing.format("`--no-sweep`")],
        "scaling": _scaling(bench, gpu_scaling)
        if bench.get("scaling") or gpu_scaling
        else [missing.format("`--no-scaling`")],
    }
    return {name: _checked(name, blocks[name]) for name in README_SECTIONS}


_MARKER = re.compile(r"<!--\s*(/?)bench:([^\s>]*)\s*-->")


def _replace_blocks(text: str, sections: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with the text between every ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` replaced by
    ``sections[NAME]`` and nothing else changed, and the names of the blocks whose text changed. Block markers
    (each alone on its line) get the block on lines of its own with a blank line either side; inline markers
    (inside a line) get it in place. Raises ``ConfigError`` for an unknown name or an unclosed, unopened or
    nested marker."""

    def where(pos: int) -> str:
        return f"README line {text.count(chr(10), 0, pos) + 1}"

    def alone(m: re.Match[str]) -> bool:
        start, end = text.rfind("\n", 0, m.start()) + 1, text.find("\n", m.end())
        return not text[start : m.start()].strip() and not text[m.end() : len(text) if end < 0 else end].strip()

    out: list[str] = []
    changed: list[str] = []
    pos = 0
    markers = _MARKER.finditer(text)
    for m in markers:
        name = m.group(2)
        if m.group(1):
            raise ConfigError(f"{where(m.start())}: closing marker {m.group(0)!r} has no opening marker before it")
        if name not in sections:
            raise ConfigError(
                f"{where(m.start())}: unknown benchmark block {name!r} in {m.group(0)!r}; "
                f"known blocks: {', '.join(sections)}"
            )
        end = next(markers, None)
        if end is None or not end.group(1) or end.group(2) != name:
            found = "the end of the file" if end is None else f"{end.group(0)!r} ({where(end.start())})"
            raise ConfigError(
                f"{where(m.start())}: {m.group(0)!r} is not closed: expected '<!-- /bench:{name} -->' before {found}"
            )
        block = sections[name]
        if alone(m):
            if not alone(end):
                raise ConfigError(f"{where(end.start())}: {end.group(0)!r} must be alone on its line, like its opening")
            block = f"\n\n{block}\n\n"
        elif "\n" in block:
            raise ConfigError(f"{where(m.start())}: block {name!r} spans lines; put its markers on lines of their own")
        if text[m.end() : end.start()] != block:
            changed.append(name)
        out += [text[pos : m.end()], block]
        pos = end.start()
    out.append(text[pos:])
    return "".join(out), changed


def _load_gpu_scaling(bench_json: Path, gpu_scaling_json: Path | str | None) -> list[dict[str, Any]] | None:
    if gpu_scaling_json is None:
        return None
    if gpu_scaling_json == "auto":
        path = bench_json.parent.parent / "gpu" / "scaling_cuda.json"
        return json.loads(path.read_text()) if path.is_file() else None
    return json.loads(Path(gpu_scaling_json).read_text())


def render_readme(
    readme: Path, bench_json: Path, gpu_scaling_json: Path | str | None = "auto"
) -> tuple[str, list[str]]:
    """What :func:`update_readme` would write, and the names of the blocks it would change; writes nothing."""
    bench_json = Path(bench_json)
    gpu = _load_gpu_scaling(bench_json, gpu_scaling_json)
    return _replace_blocks(Path(readme).read_text(), readme_sections(json.loads(bench_json.read_text()), gpu))


def update_readme(readme: Path, bench_json: Path, gpu_scaling_json: Path | str | None = "auto") -> list[str]:
    """Regenerate the README's benchmark blocks from ``bench_json``: the text between ``<!-- bench:NAME -->``
    and ``<!-- /bench:NAME -->`` becomes ``readme_sections(bench)[NAME]``, nothing outside the markers changes.
    Writes the file only if a block changed; returns the names of the changed blocks (empty: up to date).
    Raises ``ConfigError`` for an unknown or unclosed marker, or a malformed generated table.

    ``gpu_scaling_json``: GPU rows for the scaling table (``benchmarks/gpu_check.sh``'s ``scaling_cuda.json``);
    ``"auto"`` reads ``gpu/scaling_cuda.json`` beside ``bench_json``'s folder (``docs/gpu/`` for
    ``docs/bench/bench.json``) when it exists; ``None`` leaves the GPU out."""
    new, changed = render_readme(readme, bench_json, gpu_scaling_json)
    if changed:
        Path(readme).write_text(new)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m carv_adapt.bench.report --readme README.md --bench docs/bench/bench.json [--check]``."""
    p = argparse.ArgumentParser(
        prog="python -m carv_adapt.bench.report",
        description="Regenerate the README's benchmark blocks (between <!-- bench:NAME --> and <!-- /bench:NAME -->) "
        "from a `carv-adapt bench` result. `carv-adapt bench` itself never touches the README.",
    )
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--bench", type=Path, default=Path("docs/bench/bench.json"), help="the bench.json to report")
    p.add_argument(
        "--gpu-scaling",
        default="auto",
        help="GPU scaling rows (scaling_cuda.json from benchmarks/gpu_check.sh); 'auto' (default): "
        "gpu/scaling_cuda.json beside the bench folder when it exists; 'none': CPU only",
    )
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the README is out of date")
    args = p.parse_args(argv)
    gpu = None if args.gpu_scaling == "none" else args.gpu_scaling
    try:
        new, changed = render_readme(args.readme, args.bench, gpu)
    except (ConfigError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems = check_markdown_tables(new)
    for problem in problems:
        print(f"{args.readme}: {problem}", file=sys.stderr)
    if args.check:
        print(f"{args.readme}: out of date: {', '.join(changed)}" if changed else f"{args.readme}: up to date")
        return 1 if changed or problems else 0
    if changed:
        args.readme.write_text(new)
    print(f"{args.readme}: updated {', '.join(changed)}" if changed else f"{args.readme}: up to date")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
