"""`carv-adapt demo`: every workload variant runs end to end and writes its report."""

import json
import math

import pytest

pytest.importorskip("diffusers")

pytestmark = pytest.mark.slow  # every test here takes several seconds


@pytest.mark.parametrize("workload", ["distill", "attribution"])
def test_demo_variants_run_end_to_end(workload, tmp_path):
    import json

    from carv_adapt.cli import main

    out = tmp_path / workload
    assert (
        main(["demo", "--workload", workload, "--steps", "4", "--replications", "3", "--quick", "--out", str(out)]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workload"] == workload and math.isfinite(summary["measured"]["ecm"])


def test_demo_runs_end_to_end_and_writes_report(tmp_path):
    from carv_adapt.cli import main

    out = tmp_path / "report"
    assert main(["demo", "--steps", "6", "--replications", "4", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"]["steps"] == 6
    # Equal compute: the adaptive run stops once it has spent the baseline's measured compute (or at 8x the steps).
    base, adaptive = summary["baseline"], summary["adaptive"]
    assert adaptive["compute_seconds"] >= base["compute_seconds"] or adaptive["steps"] == 8 * 6
    assert math.isfinite(summary["measured"]["ecm"])
    for name in ("proposal.png", "k.png", "costs.png", "views.png"):
        assert (out / name).stat().st_size > 1000
