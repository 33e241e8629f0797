"""The time-to-quality benchmark: the cost clock charges by counting, checkpoints never pass their fraction of the
budget, the time-to-quality arithmetic, and a quick run writes well-formed outputs."""

import json
import math

import pytest
import torch

from carv_adapt.bench.cost_clock import ClockedController, CostClock, fit_line, fit_quadratic
from carv_adapt.bench.ttq_analysis import compute_to_reach, envelope, interval
from carv_adapt.controller import AdaptiveController
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.workloads.base import drive_to_compute

CLOCK = CostClock(c_0=0.125, c_out=0.5, c_in=0.0625, probe_0=0.25, probe_out=0.75, probe_quad=0.375)


def test_step_cost_is_the_compute_model():
    for N, K in [(1, 1), (2, 8), (4, 16), (3, 5)]:
        assert CLOCK.step_cost(N, K) == 0.125 + N * (0.5 + K * 0.0625)
        probe = 0.25 + N * 0.75 + N * N * 0.375
        assert CLOCK.step_cost(N, K, probed=True) == 0.125 + N * (0.5 + K * 0.0625) + probe
    assert CostClock.from_dict(CLOCK.to_dict()) == CLOCK
    with pytest.raises(ValueError, match="c_in"):
        CostClock(c_0=0.0, c_out=1.0, c_in=-1.0)


def test_fit_line_recovers_a_line_and_keeps_costs_non_negative():
    a, b = fit_line([1, 2, 4], [0.3 + 0.1 * x for x in (1, 2, 4)])
    assert a == pytest.approx(0.3) and b == pytest.approx(0.1)
    a, b = fit_line([1, 2, 4], [0.05, 0.3, 0.7])  # negative intercept: refitted through the origin
    assert a == 0.0 and b > 0
    assert fit_line([2], [0.4]) == (0.0, 0.2)  # one batch size: the average per unit
    a, b, c = fit_quadratic([1, 2, 4], [0.02 + 0.01 * x + 0.005 * x * x for x in (1, 2, 4)])
    assert (a, b, c) == pytest.approx((0.02, 0.01, 0.005))


def _fake_step(seconds_per_step=1e-3, probe_every=None):
    """A workload step that costs nothing measurable and probes every ``probe_every`` steps when K >= 2."""

    def one_step(plan, step):
        f = torch.randn(plan.N, plan.K, 3, generator=torch.Generator().manual_seed(step))
        probe = None
        if probe_every and plan.K >= 2 and step % probe_every == 0:
            probe = (torch.randn(plan.N, 4), torch.randn(plan.N, 4))
        return f, {"upstream": seconds_per_step, "teacher": seconds_per_step}, probe, 0.0

    return one_step


def test_drive_to_compute_charges_exactly_the_clock_under_a_controller():
    ctrl = AdaptiveController(batch_size=2, warmup_steps=4, refit_every=3, k_max=8, seed=0, space="parameter")
    counter = {"n": 0}

    def state():
        counter["n"] += 1
        return {"x": torch.tensor(float(counter["n"]))}

    budget = 40.0
    run = drive_to_compute(
        ctrl, None, _fake_step(probe_every=3), CLOCK.step_cost, budget, (0.0, 0.25, 0.5, 1.0), state,
        scores={"n": lambda st: float(st["x"])},
    )  # fmt: skip
    expected = [CLOCK.step_cost(r.N, r.K, p) for r, p in zip(run.records, run.probed)]
    assert run.costs == expected and any(run.probed) and len({r.K for r in run.records}) > 1
    assert [c.fraction for c in run.checkpoints] == [0.0, 0.25, 0.5, 1.0]
    for c in run.checkpoints:
        assert c.compute == pytest.approx(sum(run.costs[: c.step]), abs=1e-12)
        assert c.compute <= c.fraction * budget + 1e-9  # never past its fraction
        assert c.compute + run.costs[c.step] > c.fraction * budget  # the next step would have crossed it
    assert run.checkpoints[0].step == 0 and not run.exhausted


def test_a_clocked_controller_fits_exactly_the_costs_it_is_charged():
    for N, K, probed in [(1, 1, False), (2, 8, True), (4, 16, False), (3, 5, True)]:
        assert sum(CLOCK.stage_seconds(N, K, probed).values()) == pytest.approx(CLOCK.step_cost(N, K, probed))
    ctrl = AdaptiveController(batch_size=2, warmup_steps=6, refit_every=3, k_max=8, seed=0, space="parameter")
    clocked = ClockedController(ctrl, CLOCK)
    # The step's own timings (1 ms a stage) are replaced by the clock's charge, whatever they say.
    run = drive_to_compute(clocked, None, _fake_step(probe_every=2), CLOCK.step_cost, 30.0, (1.0,), lambda: {})
    assert len({r.K for r in run.records}) > 1 and any(run.probed)
    est = ctrl.costs.compute()
    assert (est.c_0, est.c_out, est.c_in) == pytest.approx((CLOCK.c_0, CLOCK.c_out, CLOCK.c_in), rel=1e-9)
    gamma, n = ctrl.config.policy.safeguards.forgetting, len(run.records)
    probe = [c - CLOCK.step_cost(r.N, r.K) for r, c in zip(run.records, run.costs)]  # 0 where it did not probe
    booked = sum(gamma ** (n - i) * p for i, p in enumerate(probe))  # forgetting-weighted, as every sum
    assert est.measurement * est.steps == pytest.approx(booked, rel=1e-9) and booked > 0  # the probe, apart
    assert clocked.history is ctrl.history and clocked.K == ctrl.K


def test_drive_to_compute_takes_exact_checkpoints_of_a_fixed_policy():
    pol = HierarchicalEstimator(N=2, K=1, stratification="iid", seed=0)
    per_step = CLOCK.step_cost(2, 1)
    run = drive_to_compute(
        None, pol, _fake_step(), CLOCK.step_cost, 12 * per_step, (0.25, 0.5, 1.0), lambda: {}, scores={}
    )
    assert [c.step for c in run.checkpoints] == [3, 6, 12] and len(run.records) == 12
    assert run.checkpoints[-1].compute == pytest.approx(12 * per_step)


def test_time_to_reach_interpolates_the_monotone_envelope():
    x, q = [0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 2.0, 1.0, 3.0, 2.5]
    assert list(envelope(q)) == [0.0, 2.0, 2.0, 3.0, 3.0]
    assert compute_to_reach(x, q, 1.0) == pytest.approx(0.125)
    assert compute_to_reach(x, q, 2.5) == pytest.approx(0.625)  # the dip at 0.5 does not count
    assert math.isnan(compute_to_reach(x, q, 3.5))
    assert compute_to_reach(x, [5.0, 4.0, 1.0, 2.0, 0.5], 1.0, higher_is_better=False) == pytest.approx(0.5)
    st = interval([1.0, 2.0, 3.0, math.nan])
    assert st["n"] == 3 and st["mean"] == 2.0 and st["lo"] < 2.0 < st["hi"]


@pytest.mark.slow
def test_quick_time_to_quality_writes_well_formed_outputs(tmp_path):
    from carv_adapt.bench.ttq import ARMS, TTQSettings, time_to_quality

    torch.set_num_threads(1)
    s = TTQSettings(quick=True, steps=16, reference_factor=2.0, out=tmp_path)
    result = time_to_quality(s)
    data = json.loads((tmp_path / "ttq.json").read_text())
    assert data["budget"] == pytest.approx(16 * CostClock.from_dict(data["clock"]).step_cost(2, 1))
    assert len(data["runs"]) == len(ARMS) * len(s.seeds)
    for r in data["runs"]:
        fr = [p["fraction"] for p in r["curve"]]
        assert fr == list(s.fractions()) and fr[0] == 0.0 and fr[-1] == 1.0
        for p in r["curve"]:
            assert p["compute"] <= p["fraction"] * data["budget"] + 1e-9
            assert math.isfinite(p["log_p"]) and p["log_p"] <= 0 and p["pixel_mse"] >= 0
    for metric in ("log_p", "pixel_mse"):
        a = data["analysis"][metric]
        assert [row["fraction"] for row in a["ttq"]] == [0.25, 0.5, 0.75]
        base = a["ttq"][0]["arms"]["baseline"]
        assert base["reached"] == len(s.seeds) and base["compute_fraction"]["mean"] <= 0.25 + 1e-9
        assert set(a["final"]) == set(ARMS)
    md = (tmp_path / "ttq.md").read_text()
    assert "quality at equal compute" in md and "adaptive, objective=progress" in md
    assert (tmp_path / "ttq.png").stat().st_size > 0 and list(tmp_path.glob("reference_*.pt"))
    assert result["reference"]["cached"] is False
    # The reference and the calibration are cached in the output folder.
    again = time_to_quality(TTQSettings(quick=True, steps=16, reference_factor=2.0, seeds=(0,), out=tmp_path))
    assert again["reference"]["cached"] and again["calibration"]["cached"]


def test_drive_to_compute_charges_measured_seconds_without_a_clock_and_scores_each_step_once():
    pol = HierarchicalEstimator(N=2, K=1, stratification="iid", seed=0)
    calls = []

    def score(st):
        calls.append(st["n"])
        torch.rand(3)  # a scorer that draws from the global generator must not move the run's draws
        return float(st["n"])

    counter = {"n": 0}

    def one_step(plan, step):
        counter["n"] += 1
        return _fake_step()(plan, step)

    torch.manual_seed(0)
    run = drive_to_compute(
        None, pol, one_step, None, 10e-3, (0.0, 0.05, 0.3, 0.35, 1.0), lambda: {"n": counter["n"]}, {"n": score}
    )
    after = torch.rand(1)
    assert run.costs == [2e-3] * 5 and [c.step for c in run.checkpoints] == [0, 0, 1, 1, 5]
    assert calls == [0, 1, 5]  # fractions on the same step are scored once
    assert [c.scores["n"] for c in run.checkpoints] == [0.0, 0.0, 1.0, 1.0, 5.0]
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))
