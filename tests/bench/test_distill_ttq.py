"""Distillation at equal compute: the analysis, the table and the merge of per-process results."""

import pytest

from carv_adapt.bench.distill_ttq import DistillTTQSettings, analyze, distill_table, merge_results

FRACTIONS = (0.5, 1.0)


def _run(arm, seed, fds):
    curve = [
        {"fraction": f, "step": 1, "compute": f, "wall": 0.0, "fd": fd, "accuracy": 0.5}
        for f, fd in zip(FRACTIONS, fds)
    ]
    return {"arm": arm, "seed": seed, "curve": curve}


def _result(seeds, runs):
    s = DistillTTQSettings(steps=10, seeds=seeds, fractions=FRACTIONS)
    from dataclasses import asdict

    return {
        "command": "x",
        "settings": asdict(s),
        "clock": {"c_0": 1.0},
        "budget": 5.0,
        "runs": runs,
        "analysis": analyze(runs, s),
        "wall_seconds": 1.0,
    }


def _runs(seed, base, var, prog):
    floor = _run("baseline_reseeded", seed, tuple(b + 3 for b in base))  # the baseline on other draws
    return [
        _run("baseline", seed, base),
        floor,
        _run("adaptive_variance", seed, var),
        _run("adaptive_progress", seed, prog),
    ]


def test_analysis_pairs_each_seed_with_its_baseline():
    runs = _runs(0, (60, 50), (70, 55), (55, 45)) + _runs(1, (80, 70), (75, 65), (90, 71))
    s = DistillTTQSettings(steps=10, seeds=(0, 1), fractions=FRACTIONS)
    a = analyze(runs, s)["arms"]
    assert a["adaptive_progress"]["1"]["fd_minus_baseline"] == [-5, 1]
    assert not a["adaptive_progress"]["1"]["never_worse"]
    assert a["adaptive_variance"]["0.5"]["fd_minus_baseline"] == [10, -5]
    assert a["baseline"]["1"]["fd_interval"]["mean"] == pytest.approx(60.0)
    assert a["baseline_reseeded"]["1"]["fd_minus_baseline"] == [3, 3]  # the noise floor, paired like the others
    table = distill_table(_result((0, 1), runs))
    assert "(worse in 1)" in table and table.count("\n") == 2 + 2 * 4 - 1


def test_merge_combines_disjoint_seeds_that_share_a_clock():
    a = _result((0,), _runs(0, (60, 50), (70, 55), (55, 45)))
    b = _result((1,), _runs(1, (80, 70), (75, 65), (70, 60)))
    m = merge_results([a, b])
    assert m["settings"]["seeds"] == (0, 1)
    assert m["analysis"]["arms"]["adaptive_progress"]["1"]["never_worse"]
    with pytest.raises(ValueError, match="one cost clock"):
        merge_results([a, {**b, "clock": {"c_0": 2.0}}])
    with pytest.raises(ValueError, match="disjoint seeds"):
        merge_results([a, a])


def test_settings_reject_unknown_arms_and_fractions_short_of_equal_compute():
    with pytest.raises(ValueError, match="arms"):
        DistillTTQSettings(arms=("adaptive_progress",))
    with pytest.raises(ValueError, match="fractions"):
        DistillTTQSettings(fractions=(0.25, 0.5))
