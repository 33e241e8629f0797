"""The output- against parameter-space profile benchmark: a smoke run on distillation and its table."""

import math

from carv_adapt.bench.profile_space import profile_space, profile_space_table


def test_quick_run_measures_both_profiles_and_the_three_proposals():
    result = profile_space(workloads={"distill": 20}, fractions=(1.0,), quick=True)  # quick: max(8, steps // 10) steps
    (row,) = result["checkpoints"]
    assert row["workload"] == "distill" and len(row["ratio_per_bin"]) == 20
    assert row["ratio_span"] >= 1.0 and row["calibration_pairs"] == 16  # one held-out plan of 4 x 4 draws
    w = row["within_over_best"]
    # p* of the parameter-space profile minimizes the within variance: every other proposal is at least as bad.
    assert all(v >= 1.0 - 1e-9 and math.isfinite(v) for v in w.values())
    table = profile_space_table(result)
    assert table.count("\n") == 2 and "| distill | 8/8 |" in table
