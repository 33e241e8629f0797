"""The diffusion-head bench's pieces: the IDDPM policy follows its resampler; summaries pair arms by seed."""

import math

import pytest
import torch
from scipy.stats import t as student

from carv_adapt.bench.head import ARMS, IddpmPolicy, summarize
from carv_adapt.proposals import TargetMeasure


def test_iddpm_policy_is_uniform_until_warm_then_follows_the_loss_second_moment():
    target = TargetMeasure(10, 0, 9)
    pol = IddpmPolicy(target, N=2, K=5, seed=0)
    steps = 0
    while pol.resampler.warmed_up is False:
        plan = pol.plan()
        assert torch.all(plan.rho == 1.0)  # uniform: every weight is pi / p = 1
        pol.hook(plan, plan.t.double() + 1.0)  # loss t + 1 at timestep t
        steps += 1
        assert steps < 500
    plan = pol.plan()
    assert pol.warm_step == steps
    p = pol.resampler.weights()
    expected = (torch.arange(10, dtype=torch.float64) + 1) / 55 * (1 - 0.001) + 0.001 / 10
    torch.testing.assert_close(p, expected)
    torch.testing.assert_close(plan.rho, (0.1 / expected)[plan.t])


def _run(arm, seed, val, fd=1.0, acc=0.5):
    curve = [{"val_loss": 2 * val}, {"val_loss": val}]
    return {"arm": arm, "seed": seed, "final": {"val_loss": val, "fd": fd, "accuracy": acc}, "mean_K": 4.0,
            "steps": 10, "curve": curve}  # fmt: skip


def test_summary_intervals_and_paired_differences_to_k4():
    runs = [_run("K=4", s, v) for s, v in zip((0, 1, 2), (1.0, 2.0, 3.0))]
    runs += [_run("K=1", s, v) for s, v in zip((0, 1, 2), (1.5, 2.1, 3.7))]
    out = summarize(runs, (0, 1, 2))
    assert set(out) == {"K=4", "K=1"} and set(out) <= set(ARMS)
    v = out["K=4"]["val_loss"]
    h = float(student.ppf(0.975, 2)) * 1.0 / math.sqrt(3)  # sample sd of 1, 2, 3 is 1
    assert v["mean"] == pytest.approx(2.0) and v["hi"] - v["mean"] == pytest.approx(h)
    d = out["K=1"]["minus_K4"]["val_loss"]  # paired by seed: 0.5, 0.1, 0.7
    assert d["mean"] == pytest.approx(1.3 / 3)
    assert d["hi"] - d["mean"] == pytest.approx(float(student.ppf(0.975, 2)) * 0.3055050463 / math.sqrt(3), rel=1e-6)
    assert out["K=4"]["val_loss_auc"]["mean"] == pytest.approx(2.0)  # the checkpoints after the first
    assert "minus_K4" not in out["K=4"]
