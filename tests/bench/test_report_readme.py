"""The README's benchmark blocks: generated from the committed docs/bench/bench.json, well-formed tables, only the
text between ``<!-- bench:NAME -->`` markers rewritten, and the committed README exactly what the generator writes."""

import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from carv_adapt.bench import markdown, readme, report
from carv_adapt.bench.markdown import check_markdown_tables, md_cell, md_table
from carv_adapt.bench.readme import README_SECTIONS, readme_sections, update_readme
from carv_adapt.bench.report import markdown_report
from carv_adapt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BENCH = ROOT / "docs" / "bench" / "bench.json"
GPU = ROOT / "docs" / "gpu" / "scaling_cuda.json"


@pytest.fixture(scope="module")
def bench():
    return json.loads(BENCH.read_text())


@pytest.fixture(scope="module")
def sections(bench):
    return readme_sections(bench, json.loads(GPU.read_text()))


def _table_rows(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.startswith("|")][2:]


# ---------------------------------------------------------------------- the generated blocks
def test_generated_sections_from_the_committed_bench_are_well_formed(sections, bench):
    assert list(sections) == list(README_SECTIONS)
    for name, block in sections.items():
        assert check_markdown_tables(block) == [], name
        assert block.strip(), name
    # Every checkpoint of every workload has its full row (the hand-patched README had lost nine columns).
    n_checkpoints = sum(len(w["checkpoints"]) for w in bench["ablation"])
    rows = _table_rows(sections["ablation"])
    assert len(rows) == n_checkpoints
    # The "+outer" column appears when any checkpoint measured outer designs.
    has_outer = any("outer" in c for w in bench["ablation"] for c in w["checkpoints"])
    assert all(len(markdown._cells(r)) == 11 + has_outer for r in rows)
    first = bench["ablation"][0]
    iddpm = next(v for v in first["checkpoints"][0]["variants"] if v["variant"] == "iddpm")
    lo, hi = iddpm["ecm_ci90"]
    step = f"{first['checkpoints'][0]['step']}/{first['training']['steps']}"
    assert rows[0].startswith(f"| {first['workload']} | {step} | {iddpm['ecm']:.2f} [{lo:.2f}, {hi:.2f}] |")
    c0 = first["checkpoints"][0]
    by = {v["variant"]: v for v in c0["variants"]}
    ratio = by["adaptive"]["ecm"] / by["oracle"]["ecm"]
    if "adaptive_over_oracle" in c0:  # runs that recorded the ratio's own interval
        assert c0["adaptive_over_oracle"]["ratio"] == pytest.approx(ratio, rel=1e-9)
        lo, hi = c0["adaptive_over_oracle"]["ci90"]
        ratio_cell = f"{ratio:.2f} [{lo:.2f}, {hi:.2f}]"
    else:
        ratio_cell = f"{ratio:.2f}"
    assert rows[0].endswith(f"| {ratio_cell} | {c0['pilot']['cost_ratio']:.1f} | {c0['pilot']['ratio_w_b']:.0f} |")
    assert len(_table_rows(sections["e2e"])) == len(bench["e2e"])
    assert len(_table_rows(sections["sweep"])) == len(bench["sweep"]["rows"])
    r = [v["W_predicted"] / v["W"] for w in bench["ablation"] for c in w["checkpoints"] for v in c["variants"]]
    assert f"within {min(r):.2f}-{max(r):.2f}x" in sections["calibration"]
    cost = [
        (c["controller"]["c_out"] + c["controller"]["c_0"] / w["config"]["batch_size"])
        / c["controller"]["c_in"]
        / c["pilot"]["cost_ratio"]
        for w in bench["ablation"]
        for c in w["checkpoints"]
    ]
    calibration = " ".join(sections["calibration"].split())  # the paragraph is wrapped
    assert f"is {min(cost):.2f}-{max(cost):.2f}x the pilot's at every checkpoint" in calibration
    met = sum(
        1
        for w in bench["ablation"]
        for c in w["checkpoints"]
        if (lambda by: by["adaptive"]["ecm"] / by["oracle"]["ecm"] >= 0.95)({v["variant"]: v for v in c["variants"]})
    )
    assert "| adaptive / oracle >= 0.95 |" in sections["targets"]
    assert f"| met in {met} of {n_checkpoints}" in sections["targets"]
    assert sections["wall_time"] == f"**{bench['wall_seconds'] / 60:.1f} min**"


def test_adaptive_over_oracle_shows_its_interval_and_how_many_reach_the_target(bench):
    b = copy.deepcopy(bench)
    cps = [c for w in b["ablation"] for c in w["checkpoints"]]
    for i, c in enumerate(cps):
        by = {v["variant"]: v for v in c["variants"]}
        by["adaptive"]["ecm"] = 0.9 * by["oracle"]["ecm"]  # every checkpoint misses 0.95 at the point estimate
        c["adaptive_over_oracle"] = {"ratio": 0.9, "ci90": [0.8, 1.0 if i % 2 else 0.92]}
    s = readme_sections(b)
    assert all(r.split("|")[-4].strip().startswith("0.90 [0.80, ") for r in _table_rows(s["ablation"]))
    reach = sum(i % 2 for i in range(len(cps)))
    assert f"| missed; 90 % CI reaches 0.95 in {reach} of {len(cps)} |" in s["targets"]
    assert len(_table_rows(s["misses"])) == len(cps) and "0.90 [0.80, 0.92]" in s["misses"]


def test_scaling_merges_the_gpu_rows_and_is_cpu_only_without_them(bench, sections):
    rows = _table_rows(sections["scaling"])
    assert len(rows) == 12  # 9 CPU (bins x dim) + 3 GPU-only rows at 16M elements
    last = max(bench["scaling"], key=lambda x: (x["bins"], x["dim"]))
    assert any(row.startswith(f"| {last['bins']} | 1 048 576 | {last['plan_ms']:.2f} / ") for row in rows)
    cpu_only = readme_sections(bench)["scaling"]
    assert "GPU" not in cpu_only and len(_table_rows(cpu_only)) == len(bench["scaling"])
    assert check_markdown_tables(cpu_only) == []


def test_missing_parts_give_a_note_instead_of_a_table(bench):
    partial = {k: v for k, v in bench.items() if k not in ("e2e", "sweep", "scaling")}
    s = readme_sections(partial)
    assert s["sweep"] == "_Not in this benchmark run (`--no-sweep`)._"
    assert all(check_markdown_tables(b) == [] for b in s.values())


def test_bench_md_is_regenerated_from_bench_json(bench):
    assert markdown_report(bench) == (BENCH.parent / "bench.md").read_text()


# ---------------------------------------------------------------------- the committed README
def test_committed_readme_is_exactly_what_update_readme_writes(tmp_path):
    """A hand edit of a generated block fails here: regenerate with
    ``python -m carv_adapt.bench.report --readme README.md --bench docs/bench/bench.json``."""
    copy_ = tmp_path / "README.md"
    shutil.copy(README, copy_)
    assert update_readme(copy_, BENCH, GPU) == []
    assert copy_.read_text() == README.read_text()
    # "auto" finds docs/gpu/scaling_cuda.json beside docs/bench/, like the command does.
    assert update_readme(copy_, BENCH) == []


def test_committed_readme_has_every_block_and_well_formed_tables():
    text = README.read_text()
    assert check_markdown_tables(text) == []
    for name in README_SECTIONS:
        assert text.count(f"<!-- bench:{name} -->") == 1 and text.count(f"<!-- /bench:{name} -->") == 1, name
    # CI reads the test command from the line after this one; the set-up block stays as it is.
    assert "\n```bash\n# Run the main job" in text and "\n# Run the tests\npython -m venv .venv" in text


# ---------------------------------------------------------------------- update_readme
STALE = """# title

intro with 1.23 typed by hand, kept as it is
run time <!-- bench:wall_time -->**0.1 min**<!-- /bench:wall_time --> on a laptop.

<!-- bench:targets -->
| stale | table |
|---|---|
<!-- /bench:targets -->

text between, | not a table row

<!-- bench:e2e -->
<!-- /bench:e2e -->

tail text 4.56
"""


def test_update_readme_replaces_only_between_markers_and_is_idempotent(tmp_path, sections):
    path = tmp_path / "README.md"
    path.write_text(STALE)
    assert update_readme(path, BENCH, GPU) == ["wall_time", "targets", "e2e"]
    text = path.read_text()
    assert text.startswith("# title\n\nintro with 1.23 typed by hand, kept as it is\nrun time <!-- bench:wall_time -->")
    assert f"run time <!-- bench:wall_time -->{sections['wall_time']}<!-- /bench:wall_time --> on a laptop." in text
    assert f"<!-- bench:targets -->\n\n{sections['targets']}\n\n<!-- /bench:targets -->" in text
    assert f"<!-- bench:e2e -->\n\n{sections['e2e']}\n\n<!-- /bench:e2e -->" in text
    assert "\n\ntext between, | not a table row\n\n" in text and text.endswith("\n\ntail text 4.56\n")
    assert "stale" not in text
    # What lies outside the markers is byte for byte the input.
    outside = [p.split("<!-- /bench:")[-1] for p in text.split("<!-- bench:")]
    assert outside == [p.split("<!-- /bench:")[-1] for p in STALE.split("<!-- bench:")]
    assert check_markdown_tables(text) == []
    mtime = path.stat().st_mtime_ns
    assert update_readme(path, BENCH, GPU) == []
    assert path.read_text() == text and path.stat().st_mtime_ns == mtime  # not rewritten


@pytest.mark.parametrize(
    "text, match",
    [
        ("a\n<!-- bench:ablation -->\n| x |\n", r"line 2: '<!-- bench:ablation -->' is not closed.*end of the file"),
        (
            "<!-- bench:ablation -->\n<!-- /bench:e2e -->\n",
            r"not closed.*before '<!-- /bench:e2e -->' \(README line 2\)",
        ),
        ("<!-- bench:ablation -->\n<!-- bench:e2e -->\n<!-- /bench:e2e -->\n", "not closed"),
        ("x\n\n<!-- /bench:e2e -->\n", r"line 3: closing marker '<!-- /bench:e2e -->' has no opening marker"),
        ("<!-- bench:ecm_table -->\n<!-- /bench:ecm_table -->\n", r"unknown benchmark block 'ecm_table'.*known blocks"),
        ("x <!-- bench:ablation --><!-- /bench:ablation --> y\n", "spans lines; put its markers on lines of their own"),
        ("<!-- bench:e2e -->\nx <!-- /bench:e2e -->\n", "must be alone on its line"),
    ],
)
def test_unknown_unclosed_and_misplaced_markers_raise_config_error(tmp_path, text, match):
    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        update_readme(path, BENCH, GPU)
    assert path.read_text() == text  # nothing written


def test_command_updates_and_checks_the_readme(tmp_path, capsys):
    path = tmp_path / "README.md"
    path.write_text(STALE)
    args = ["--readme", str(path), "--bench", str(BENCH)]
    assert report.main([*args, "--check"]) == 1
    assert path.read_text() == STALE and "out of date: wall_time, targets, e2e" in capsys.readouterr().out
    assert report.main(args) == 0
    assert "updated wall_time, targets, e2e" in capsys.readouterr().out
    assert report.main([*args, "--check"]) == 0
    text = path.read_text()
    edited = re.sub(r"\| met in (\d+) of (\d+)", lambda m: f"| met in {int(m[1]) + 1} of {m[2]}", text, count=1)
    assert edited != text
    path.write_text(edited)  # a hand edit
    assert report.main([*args, "--check"]) == 1
    path.write_text("<!-- bench:nope -->\n<!-- /bench:nope -->\n")
    assert report.main(args) == 2 and "unknown benchmark block 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------- tables and escaping
def test_check_markdown_tables_finds_malformed_rows():
    good = "| a | b |\n|---|:-:|\n| 1 | x \\| y |\n| `p \\|\\| q` | 2 |\n"
    assert check_markdown_tables(good) == []
    broken = "| a | b | c |\n|---|---|---|\n | 0.87 | 6.2 |\n| 1 | 2 | 3 |\n| 1 | `E ||f||^2` |\n"
    problems = check_markdown_tables(broken)
    assert problems == [
        "line 3: table row has whitespace before its first '|': ' | 0.87 | 6.2 |'",
        "line 3: row has 2 cells, the header has 3: ' | 0.87 | 6.2 |'",
        "line 5: row has 6 cells, the header has 3: '| 1 | `E ||f||^2` |'",
    ]
    assert check_markdown_tables("| a | b |\n|---|---|---|\n") == [
        "line 2: delimiter row has 3 cells, the header has 2: '|---|---|---|'"
    ]
    assert check_markdown_tables("text\n| 1 | 2 |\n") == [
        "line 2: '|' row outside a table (no header and delimiter row): '| 1 | 2 |'"
    ]
    # Fenced code and indented code are not tables; a blank line ends a table.
    assert check_markdown_tables("```\n| a |\n | b | c |\n```\n    | code |\n\n| a |\n|---|\n| 1 |\n\nx\n") == []


def test_cells_with_a_pipe_are_escaped_and_the_table_stays_well_formed(bench):
    assert md_cell("|x - y|^2") == "\\|x - y\\|^2"
    assert md_cell("two\nlines") == "two lines"
    table = md_table(["metric", "value"], [["|x - y|^2", 1.0], ["a || b", 2]])
    assert table[2] == "| \\|x - y\\|^2 | 1.0 |"
    assert check_markdown_tables("\n".join(table)) == []
    # Through the README generator: a metric name with pipes stays in its cell.
    b = copy.deepcopy(bench)
    b["e2e"][0]["quality_metric"] = "|render - mode|^2"
    e2e = readme_sections(b)["e2e"]
    assert "| sds3d, \\|render - mode\\|^2 | 0 / 1 / 2 |" in e2e and check_markdown_tables(e2e) == []


def test_a_malformed_generated_table_raises(bench, monkeypatch):
    monkeypatch.setattr(readme, "_targets", lambda result: ["| a | b |", "|---|---|", "| 1 | 2 | 3 |"])
    with pytest.raises(ConfigError, match=r"generated block 'targets' has malformed markdown tables: line 3: row"):
        readme_sections(bench)
