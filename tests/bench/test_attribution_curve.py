"""The attribution curve benchmark: intervals over seeds, paired CRN gains, well-formed table and README blocks."""

import math

import pytest

from carv_adapt.bench.attribution_curve import CurveSettings, attribution_curve, markdown, summarize
from carv_adapt.bench.markdown import check_markdown_tables
from carv_adapt.bench.readme_blocks import attribution_sections


def _result():
    runs = []
    for seed, (a, b) in enumerate([(0.5, 0.7), (0.6, 0.7), (0.4, 0.8)]):
        for crn, final in ((False, a), (True, b)):
            curve = [
                {"evals_per_example": 8.0, "fraction": 0.5, "spearman": final / 2},
                {"evals_per_example": 16.0, "fraction": 1.0, "spearman": final},
            ]
            runs.append({"arm": "fixed_k8", "crn": crn, "seed": seed, "curve": curve})
    settings = dict(num_train=5, num_queries=2, batch_size=2, k_max=8, reference_outer=4, reference_inner=8)
    result = {
        "settings": {**settings, "seeds": [0, 1, 2]},
        "labels": {"fixed_k8": "fixed K=8 | IS"},
        "references": [{"seed": s, "reliability": r} for s, r in enumerate([0.8, 0.85, 0.9])],
        "runs": runs,
    }
    result["summary"] = summarize(result)
    return result


def test_summary_intervals_and_paired_gain():
    rows = {(e["crn"], e["fraction"]): e for e in _result()["summary"]}
    full = rows[(False, 1.0)]
    assert full["spearman"] == pytest.approx(0.5) and full["seeds"] == 3
    # t(0.975, 2) = 4.303; sd of (0.5, 0.6, 0.4) = 0.1.
    assert full["hi"] - full["spearman"] == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-3)
    gain = rows[(True, 1.0)]
    assert gain["crn_gain"] == pytest.approx((0.2 + 0.1 + 0.4) / 3) and "crn_gain" not in full


def test_table_and_readme_blocks_are_well_formed():
    result = _result()
    table = "\n".join(markdown(result))
    assert check_markdown_tables(table) == [] and "fixed K=8 \\| IS" in table
    blocks = attribution_sections(result)
    assert set(blocks) == {"attribution_curve", "crn_gain"} and "\n" not in blocks["crn_gain"]
    assert "fixed K=8 +0.23" in blocks["crn_gain"] and "16 teacher evaluations" in blocks["crn_gain"]
    assert "not measured" in attribution_sections(None)["crn_gain"]


@pytest.mark.slow
def test_a_smoke_run_is_well_formed():
    pytest.importorskip("diffusers")
    s = CurveSettings.smoke(arms=("baseline", "adaptive_variance"), evals_per_example=8, fractions=(0.5, 1.0))
    result = attribution_curve(s, say=lambda m: None)
    assert {(r["arm"], r["crn"]) for r in result["runs"]} == {
        (a, c) for a in ("baseline", "adaptive_variance") for c in (False, True)
    }
    for r in result["runs"]:
        assert [c["fraction"] for c in r["curve"]] == [0.5, 1.0]
        assert r["curve"][-1]["evals_per_example"] <= 8.0 + 1e-9  # never past the budget
        assert all(-1.0 <= c["spearman"] <= 1.0 for c in r["curve"])
    assert check_markdown_tables("\n".join(markdown(result))) == []


def test_merge_joins_seeds_and_refuses_overlaps():
    from carv_adapt.bench.attribution_curve import merge

    a, b = _result(), _result()
    b["settings"] = {**b["settings"], "seeds": [3, 4]}  # asked for two, saved one: the seeds run count
    b["runs"] = [{**r, "seed": 3} for r in b["runs"] if r["seed"] == 0]
    b["references"] = [{"seed": 3, "reliability": 0.7}]
    a["wall_seconds"], b["wall_seconds"] = 10.0, 5.0
    both = merge([a, b])
    assert both["settings"]["seeds"] == [0, 1, 2, 3] and both["wall_seconds"] == 15.0
    assert {e["seeds"] for e in both["summary"]} == {4}
    with pytest.raises(ValueError, match="two results"):
        merge([a, a])
