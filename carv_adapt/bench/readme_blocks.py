"""README blocks generated from benchmark outputs other than ``bench.json`` (:mod:`carv_adapt.bench.readme` renders
``bench.json``'s blocks and merges these in). Each reads its own JSON beside ``bench.json``; when the file is absent
the block says so instead of showing figures.

- ``attribution_curve``: the table of :mod:`carv_adapt.bench.attribution_curve` (``attribution_curve.json``);
- ``crn_gain``: one inline sentence, the paired gain of common random numbers per policy at the full budget.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from carv_adapt.bench.markdown import _checked

__all__ = ["EXTRA_SECTIONS", "extra_sections", "attribution_sections"]

EXTRA_SECTIONS = ("attribution_curve", "crn_gain")

_SHORT = {
    "baseline": "baseline",
    "fixed_k8": "fixed K=8",
    "adaptive_variance": "adaptive (variance)",
    "adaptive_progress": "adaptive (progress)",
}


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def attribution_sections(curve: dict[str, Any] | None) -> dict[str, str]:
    """The two blocks from an ``attribution_curve.json`` result (``None``: not measured)."""
    from carv_adapt.bench.attribution_curve import markdown

    if curve is None:
        note = "_Not measured: run `python benchmarks/attribution_curve.py`._"
        return {"attribution_curve": note, "crn_gain": "(not measured)"}
    s = curve["settings"]
    rel = [r["reliability"] for r in curve["references"]]
    seeds = len({r["seed"] for r in curve["runs"]})
    lines = markdown(curve)
    lines += [
        "",
        f"{seeds} seeds; {s['num_train']} training examples and {s['num_queries']} queries per seed, `N = "
        f"{s['batch_size']}`, controller `K <= {s['k_max']}`; cells: mean Spearman over seeds [95 % t-interval]; "
        f"CRN gain: paired difference (same seed) at the full budget. Reference: two halves of "
        f"{s['reference_outer']} x {s['reference_inner']} draws per example, agreeing with each other at "
        f"Spearman {min(rel):.2f}-{max(rel):.2f}. Figure: `docs/bench/attribution_curve.png`.",
    ]
    full = max(e["fraction"] for e in curve["summary"])
    gains = [e for e in curve["summary"] if e["fraction"] == full and "crn_gain" in e]
    evals = sum(e["evals_per_example"] for e in gains) / max(len(gains), 1)
    parts = [
        f"{_SHORT.get(e['arm'], e['arm'])} {_signed(e['crn_gain'])} "
        f"[{_signed(e['crn_gain_lo'])}, {_signed(e['crn_gain_hi'])}]"
        for e in gains
    ]
    sentence = f"{', '.join(parts)} at {evals:.0f} teacher evaluations per example ({seeds} seeds, 95 % t-intervals)"
    return {"attribution_curve": _checked("attribution_curve", lines), "crn_gain": sentence}


def extra_sections(bench_json: Path | str) -> dict[str, str]:
    """Every extra block, from the JSON files beside ``bench_json`` (``docs/bench/`` for the committed run)."""
    path = Path(bench_json).parent / "attribution_curve.json"
    return attribution_sections(json.loads(path.read_text()) if path.is_file() else None)
