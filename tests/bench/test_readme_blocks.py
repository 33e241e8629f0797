"""The README blocks rendered from benchmark outputs other than bench.json (carv_adapt.bench.readme_blocks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from carv_adapt.bench.markdown import check_markdown_tables
from carv_adapt.bench.readme_blocks import (
    EXTRA_SECTIONS,
    cold_overhead_section,
    control_variate_section,
    demo_section,
    diffusion_head_section,
    extra_sections,
    outer_section,
    sd_tiny_section,
    ttq_section,
)

BENCH = Path(__file__).resolve().parents[2] / "docs" / "bench"


def test_every_block_renders_from_the_committed_outputs_with_well_formed_tables():
    blocks = extra_sections(BENCH / "bench.json")
    assert set(blocks) == set(EXTRA_SECTIONS)
    for name in EXTRA_SECTIONS[2:]:
        assert "Not measured" not in blocks[name], name
        assert check_markdown_tables(blocks[name]) == [], name


def test_the_blocks_carry_the_committed_figures():
    cv = json.loads((BENCH / "cv" / "ablation_sds3d.json").read_text())
    ratio = cv["checkpoints"][0]["control_variate"]["paired"]["variance_ratio"]
    assert f"{ratio:.3f}" in control_variate_section(cv)
    head = json.loads((BENCH / "diffusion_head.json").read_text())
    progress = head["summary"]["adaptive (progress)"]["accuracy"]["mean"]
    assert f"{progress:.3f}" in diffusion_head_section(head)
    runs = [(p.name, json.loads(p.read_text())) for p in sorted((BENCH / "outer").glob("*.json"))]
    text = outer_section(runs)
    for name, r in runs:
        assert f"docs/bench/outer/{name}" in text and f"`N = {r['ablation'][0]['config']['batch_size']}`" in text
    demo = json.loads((BENCH.parent / "demo" / "summary.json").read_text())
    steps = (demo["baseline"]["steps"], demo["adaptive"]["steps"])
    assert f"| baseline | {steps[0]} |" in demo_section(demo) and f"| adaptive | {steps[1]} |" in demo_section(demo)
    ttq = json.loads((BENCH / "ttq" / "ttq.json").read_text())
    assert f"{ttq['wall_seconds'] / 60:.1f} min" in ttq_section(ttq) and "**Cost and wall clock.**" in ttq_section(ttq)
    cold = json.loads((BENCH / "cold_overhead.json").read_text())
    cold_plan = cold["median_ms_per_step"]["cold"]["plan"]
    assert f"| between workload calls | {cold_plan:.3f} |" in cold_overhead_section(cold)
    sd = json.loads((BENCH / "sd_tiny.json").read_text())
    assert all(f"| CFG {k} | {v:.2f} |" in sd_tiny_section(sd) for k, v in sd["accuracy_by_cfg"].items())


def test_missing_outputs_say_so_instead_of_showing_figures(tmp_path):
    shutil.copy(BENCH / "bench.json", tmp_path / "bench.json")
    blocks = extra_sections(tmp_path / "bench.json")
    for name in EXTRA_SECTIONS:
        if name == "crn_gain":
            continue
        assert blocks[name].startswith("_Not measured"), name
