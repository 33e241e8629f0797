"""`carv-adapt demo`: every workload variant runs end to end and writes its report, with quality against compute
and the compute each run needs to reach the baseline's quality."""

import json
import math

import pytest

from carv_adapt.demo import DemoSettings, compute_to_baseline_quality, format_table

LEVELS = ("25%", "50%", "75%")


def _curve(xs, qs, fractions=None):
    fractions = fractions or xs
    return [{"fraction": f, "compute_fraction": x, "quality": q} for f, x, q in zip(fractions, xs, qs)]


def test_demo_checkpoints_cover_the_grid_and_the_levels():
    fr = DemoSettings(curve_points=10).fractions()
    assert fr[0] == 0.0 and fr[-1] == 1.0 and {0.25, 0.5, 0.75} <= set(fr) and len(fr) == 13
    assert DemoSettings(curve_points=4, levels=(0.3,)).fractions() == (0.0, 0.25, 0.3, 0.5, 0.75, 1.0)
    with pytest.raises(ValueError, match="levels"):
        DemoSettings(levels=(1.0,)).fractions()


def test_compute_to_baseline_quality_interpolates_the_envelope_of_a_synthetic_curve():
    x = [0.0, 0.25, 0.5, 0.75, 1.0]
    base = _curve(x, [0.0, 1.0, 2.0, 3.0, 4.0])
    # The adaptive run is twice as fast up to 3.0, dips at 0.75 (the envelope keeps 3.0), then stalls.
    adapt = _curve(x, [0.0, 2.0, 3.0, 2.5, 3.0])
    rows = compute_to_baseline_quality({"baseline": base, "adaptive": adapt}, (0.25, 0.5, 0.75))
    assert [r["baseline_quality"] for r in rows] == [1.0, 2.0, 3.0]
    assert [r["baseline"] for r in rows] == pytest.approx([0.25, 0.5, 0.75])
    assert [r["adaptive"] for r in rows] == pytest.approx([0.125, 0.25, 0.5])
    assert [r["speedup"] for r in rows] == pytest.approx([2.0, 2.0, 1.5])
    # A level the adaptive run never reaches is None (JSON null), not NaN; so is its speedup.
    slow = _curve(x, [0.0, 0.5, 1.0, 1.5, 1.9])
    rows = compute_to_baseline_quality({"baseline": base, "adaptive": slow}, (0.25, 0.75))
    assert rows[0]["adaptive"] == pytest.approx(0.5) and rows[1]["adaptive"] is None and rows[1]["speedup"] is None
    json.dumps(rows, allow_nan=False)


def test_compute_to_baseline_quality_lower_is_better_and_missing_scores():
    # The baseline's target at 25 % is its best (lowest FD) within 25 % of its budget: on a measured clock its
    # checkpoint at 25 % of its steps may have taken 30 % of its seconds, and does not count.
    base = _curve([0.0, 0.2, 0.3, 1.0], [10.0, 8.0, 7.0, 6.0], [0.0, 0.2, 0.25, 1.0])
    adapt = _curve([0.0, 0.2, 0.4, 0.9], [10.0, None, 7.0, 5.0], [0.0, 0.25, 0.5, 1.0])  # one score missing
    (row,) = compute_to_baseline_quality({"baseline": base, "adaptive": adapt}, (0.25,), higher_is_better=False)
    assert row["baseline_quality"] == 8.0 and row["baseline"] == pytest.approx(0.2)
    assert row["adaptive"] == pytest.approx(0.4 * 2 / 3)  # 10 -> 7 between 0 and 0.4, the None left out
    # No finite baseline score up to a level: no target, nothing to reach.
    none = _curve([0.0, 0.3, 1.0], [None, None, 1.0], [0.0, 0.25, 1.0])
    (row,) = compute_to_baseline_quality({"baseline": none, "adaptive": adapt}, (0.25,))
    assert row["baseline_quality"] is None and row["adaptive"] is None


def _check_report(out, workload, steps=None):
    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert summary["workload"] == workload and math.isfinite(summary["measured"]["ecm"])
    assert (out / "quality_vs_compute.png").stat().st_size > 1000
    base, adaptive, clock = summary["baseline"], summary["adaptive"], summary["clock"]
    if steps is not None:
        assert base["steps"] == steps
    # Equal compute on the demo's clock: the adaptive run stops before the step that would pass the baseline's budget.
    assert base["compute"] == pytest.approx(clock["budget"]) and adaptive["compute"] <= clock["budget"] * (1 + 1e-9)
    ttq = summary["time_to_quality"]
    assert ttq["fractions"][0] == 0.0 and ttq["fractions"][-1] == 1.0
    for name in ("baseline", "adaptive"):
        curve = ttq["curves"][name]
        assert [p["fraction"] for p in curve] == ttq["fractions"]
        if name == "adaptive" or clock["kind"] == "cost_clock":  # a measured baseline checkpoints by its steps
            assert all(p["compute_fraction"] <= p["fraction"] + 1e-9 for p in curve)  # never past its fraction
        reach = summary[name]["compute_to_baseline_quality"]
        assert list(reach) == list(LEVELS)
        for v in reach.values():
            assert v is None or (math.isfinite(v) and 0 <= v <= 1 + 1e-9)
    for lv, level in zip(ttq["levels"], (0.25, 0.5, 0.75)):
        assert lv["fraction"] == level
        assert lv["baseline_quality"] is None or lv["baseline"] <= level + 1e-9  # the baseline reaches its own
    header = format_table(summary)[0]
    assert [h for h in header if h.startswith("to base@")] == [f"to base@{p}" for p in LEVELS]
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["distill", "attribution"])
def test_demo_variants_run_end_to_end(workload, tmp_path):
    pytest.importorskip("diffusers")
    from carv_adapt.cli import main

    out = tmp_path / workload
    assert (
        main(["demo", "--workload", workload, "--steps", "4", "--replications", "3", "--quick", "--out", str(out)]) == 0
    )
    summary = _check_report(out, workload)
    assert summary["clock"]["kind"] == "measured" and summary["clock"]["costs"] is None
    assert summary["higher_is_better"] is (workload == "attribution")  # FD is lower-is-better


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_report(tmp_path):
    pytest.importorskip("diffusers")
    from carv_adapt.cli import main

    out = tmp_path / "report"
    assert main(["demo", "--steps", "6", "--replications", "4", "--quick", "--out", str(out)]) == 0
    summary = _check_report(out, "sds3d", steps=6)
    # sds3d has a cost clock: the budget is the baseline's 6 steps at its step cost, calibrated once and cached.
    clock = summary["clock"]
    assert clock["kind"] == "cost_clock" and (out / "calibration.json").exists()
    # The clock's form, not a timed slope's sign (a loaded machine can fit a slope of 0): finite, non-negative
    # costs and a step that costs something.
    costs = [clock["costs"][k] for k in ("c_0", "c_out", "c_in")]
    assert all(math.isfinite(v) and v >= 0 for v in costs) and sum(costs) > 0
    assert summary["quality_metric"] == "log p(digit)" and summary["baseline"]["quality"] < 0
    assert summary["config"]["max_angle_deg"] == 90.0 and summary["config"]["init_noise"] == 0.1  # DEMO_CONFIG
    for name in ("proposal.png", "k.png", "costs.png", "views.png"):
        assert (out / name).stat().st_size > 1000


def test_demo_config_defaults_per_workload_and_the_camera_option(tmp_path, capsys):
    from carv_adapt.cli import main
    from carv_adapt.demo import DEMO_CONFIG, DemoSettings

    assert DemoSettings().workload_config() == {"max_angle_deg": 90.0, "init_noise": 0.1}
    assert DemoSettings(workload="distill").workload_config() == {}
    assert DemoSettings(config={"max_angle_deg": 25.0}).workload_config() == {"max_angle_deg": 25.0}
    assert DEMO_CONFIG["sds3d"]["max_angle_deg"] == 90.0
    code = main(["demo", "--workload", "distill", "--max-angle-deg", "25", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err == "carv-adapt: error: --max-angle-deg applies to the sds3d workload only, not 'distill'\n"
    assert not (tmp_path / "r").exists()  # refused before any work
