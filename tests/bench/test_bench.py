"""The benchmark's parts: improved-diffusion's resampler, replications and bootstrap intervals, the pilot and
the brute-force oracle (on the synthetic workload with known statistics), and a quick end-to-end run."""

import json
import math

import numpy as np
import pytest
import torch

from carv_adapt.bench import LossSecondMomentResampler, Replications, ecm_interval, replicate
from carv_adapt.bench.ablation import TimedController, fill_iddpm
from carv_adapt.bench.pilot import EstimateCost, brute_force_oracle, run_pilot
from carv_adapt.errors import ConfigError
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.proposals import BinnedProposal, TargetMeasure, UniformProposal
from carv_adapt.variance import work_normalized_variance
from carv_adapt.workloads import SyntheticNested

T, BINS, D = 60, 6, 16


def _wl(c_out=0.010, c_in=0.001):
    target = TargetMeasure(T, 0, T - 1)
    edges = target.bin_edges(BINS)
    s = 0.3 + 3.0 * torch.linspace(0, 1, BINS, dtype=torch.float64) ** 2
    return SyntheticNested(target, edges, s, D=D, sb=1.0, mu0=0.5, c_out=c_out, c_in=c_in)


def _draws(wl, seed=0):
    g = torch.Generator().manual_seed(seed)

    def fn(plan, final):
        f = wl.contributions(plan, g)
        return (f if final else None), f.norm(dim=-1)

    return fn


# ---------------------------------------------------------------------- improved-diffusion's resampler
def test_iddpm_resampler_is_uniform_until_every_timestep_has_a_full_history():
    target = TargetMeasure(10, 2, 7)  # six timesteps in the support
    r = LossSecondMomentResampler(target, history_per_term=2, uniform_prob=0.1)
    r.update(torch.arange(2, 8), torch.ones(6))
    assert not r.warmed_up
    assert torch.allclose(r.proposal().pmf(), target.pmf())
    r.update(torch.arange(2, 7), torch.ones(5))
    assert not r.warmed_up  # timestep 7 has one loss
    r.update(torch.tensor([7]), torch.tensor([1.0]))
    assert r.warmed_up


def test_iddpm_weights_follow_the_loss_second_moment_with_a_uniform_floor():
    target = TargetMeasure(4)
    r = LossSecondMomentResampler(target, history_per_term=2, uniform_prob=0.2)
    r.update(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.tensor([1.0, 1.0, 3.0, 3.0, 0.0, 0.0, 1.0, 7.0]))
    rms = torch.tensor([1.0, 3.0, 0.0, 5.0], dtype=torch.float64)  # sqrt(mean of squares)
    expected = rms / rms.sum() * 0.8 + 0.2 / 4
    assert torch.allclose(r.weights(), expected)
    assert torch.allclose(r.proposal().pmf(), expected)
    # A full history drops its oldest loss: timestep 3 now holds (7, 1).
    r.update(torch.tensor([3]), torch.tensor([1.0]))
    assert r.history[3].tolist() == [7.0, 1.0]


def test_iddpm_resampler_rejects_timesteps_outside_the_support_and_round_trips():
    target = TargetMeasure(10, 2, 7)
    r = LossSecondMomentResampler(target, history_per_term=3)
    with pytest.raises(ConfigError, match=r"timesteps \[9\] are outside"):
        r.update(torch.tensor([9]), torch.tensor([1.0]))
    with pytest.raises(ConfigError, match="history_per_term must be >= 1, got 0"):
        LossSecondMomentResampler(target, history_per_term=0)
    r.update(torch.arange(2, 8).repeat(3), torch.rand(18, generator=torch.Generator().manual_seed(0)))
    r2 = LossSecondMomentResampler(target, history_per_term=3)
    r2.load_state_dict(r.state_dict())
    assert torch.equal(r2.weights(), r.weights()) and r2.warmed_up


def test_fill_iddpm_learns_the_proxy_optimal_proposal_on_the_synthetic_workload():
    wl = _wl()
    res, _ = fill_iddpm(_draws(wl), wl.target, history=40, uniform_prob=0.001, inner=8, seed=0)
    assert res.warmed_up and int(res.counts.sum()) == 40 * T
    # E ||f||^2 | t = m(t): the resampler's bin masses approach pi_b sqrt(m_b) normalised.
    p_b = torch.stack([res.proposal().pmf()[a:b].sum() for a, b in zip(wl.edges[:-1], wl.edges[1:])])
    want = wl.pi_b * wl.m_bins().sqrt()
    want = want / want.sum()
    # Each bin pools 10 timesteps x 40 losses of a scaled chi^2_16: relative SE of its mean square < 4 %.
    assert torch.allclose(p_b, want, rtol=0.1)


# ---------------------------------------------------------------------- replications and intervals
def test_replicated_variance_matches_the_exact_variance_within_its_standard_error():
    wl = _wl()
    g = torch.Generator().manual_seed(1)
    pols = {
        "base": HierarchicalEstimator(UniformProposal(wl.target), N=2, K=1, stratification="iid", seed=2),
        "reuse": HierarchicalEstimator(UniformProposal(wl.target), N=2, K=8, stratification="iid", seed=3),
    }
    reps = replicate(lambda plan: plan.weighted_mean(wl.contributions(plan, g)), pols, R=400)
    sw = wl.sigma_w2(wl.pi_b)
    for name, K in (("base", 1), ("reuse", 8)):
        exact = wl.sigma_b2 / 2 + sw / (2 * K)
        r = reps[name]
        assert r.R == 400 and r.K == K and r.seconds_per_estimate > 0
        assert abs(r.variance - exact) < 4 * r.relative_se * exact, (name, r.variance, exact)


def test_ecm_interval_matches_the_delta_method_and_covers_the_exact_ratio():
    rng = np.random.default_rng(0)
    R, d = 120, 8
    b = rng.normal(size=(R, d)) * 2.0  # tr Cov = 32
    p = rng.normal(size=(R, d)) * 1.0  # tr Cov = 8

    def reps(x, sec):
        x = x - x.mean(0)
        return Replications(x @ x.T, np.full(R, sec), 1, 1)

    rb, rp = reps(b, 1.0), reps(p, 2.0)
    exact = (32 * 1.0) / (8 * 2.0)
    e, lo, hi = ecm_interval(rb, rp, confidence=0.9, n_resamples=1000, seed=0)
    assert e == pytest.approx(rb.W / rp.W)
    rse = math.sqrt(rb.relative_se**2 + rp.relative_se**2)
    assert lo < e < hi
    assert 0.5 < (hi - lo) / 2 / (1.645 * rse * e) < 2.0
    assert abs(e - exact) < 4 * rse * e


# ---------------------------------------------------------------------- pilot statistics and the oracle
def test_pilot_statistics_are_unbiased_on_the_synthetic_workload():
    wl = _wl()
    cost = EstimateCost(a=2 * wl.c_out, b=2 * wl.c_in, N=2)
    runs = [run_pilot(_draws(wl, s), wl.target, 64, 6, BINS, cost, seed=s) for s in range(12)]
    for name, exact in (("sigma_b2", wl.sigma_b2), ("sigma_w2", wl.sigma_w2(wl.pi_b)), ("M2", wl.M2)):
        xs = torch.tensor([getattr(r, name) for r in runs])
        se = float(xs.std() / math.sqrt(len(xs)))
        assert abs(float(xs.mean()) - exact) < 4 * se, (name, float(xs.mean()), exact, se)
    m = torch.stack([r.m_b for r in runs])
    se_m = m.std(0) / math.sqrt(len(runs))
    assert bool(((m.mean(0) - wl.m_bins()).abs() < 4 * se_m).all())


def test_brute_force_oracle_is_within_five_percent_of_the_exact_optimum():
    wl = _wl(c_out=0.02, c_in=0.001)
    cost = EstimateCost(a=2 * wl.c_out, b=2 * wl.c_in, N=2)
    pilot = run_pilot(_draws(wl), wl.target, 400, 8, BINS, cost, seed=0)
    choice = brute_force_oracle(pilot, k_max=64)
    W_choice = work_normalized_variance(wl.sigma_b2, wl.sigma_w2(choice.p_b), choice.K, wl.c_out, wl.c_in)
    best = wl.oracle(k_max=64)
    assert W_choice <= 1.05 * best.W, (choice.name, choice.K, best.K)
    # The model's own prediction of the chosen W (per estimate, N = 2) is calibrated.
    assert choice.W == pytest.approx(W_choice, rel=0.15)
    # A proposal the pilot prefers is a real improvement over uniform at the same K.
    W_uniform = work_normalized_variance(wl.sigma_b2, wl.sigma_w2(wl.pi_b), choice.K, wl.c_out, wl.c_in)
    assert choice.name == "uniform" or W_choice < W_uniform
    assert isinstance(BinnedProposal(wl.target, pilot.edges, choice.p_b).pmf(), torch.Tensor)


def test_timed_controller_times_the_three_calls_and_delegates_the_rest():
    from carv_adapt import AdaptiveController

    ctrl = AdaptiveController(num_timesteps=T, num_bins=BINS, batch_size=2, warmup_steps=2, refit_every=2)
    timed = TimedController(ctrl)
    wl = _wl()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        plan = timed.plan()
        timed.observe(plan, wl.contributions(plan, g), costs=wl.costs(plan))
        timed.step()
    assert all(v > 0 for v in timed.seconds.values())
    assert timed.step_count == 5 and timed.config.policy.num_bins == BINS and len(timed.history) == 2


# ---------------------------------------------------------------------- the whole command, quick sizes
def test_quick_bench_writes_tables_json_and_figures(tmp_path):
    from carv_adapt.bench import BenchSettings, run_bench
    from carv_adapt.bench.ablation import VARIANTS

    torch.set_num_threads(1)
    s = BenchSettings(workloads=("attribution",), e2e_seeds=(), sweep=False, scaling=False, quick=True, out=tmp_path)
    result = run_bench(s)
    data = json.loads((tmp_path / "bench.json").read_text())
    (w,) = data["ablation"]
    assert len(w["checkpoints"]) == 3
    for c in w["checkpoints"]:
        assert [r["variant"] for r in c["variants"]] == list(VARIANTS)
        for r in c["variants"]:
            assert r["W"] > 0 and r["ecm_ci90"][0] <= r["ecm"] <= r["ecm_ci90"][1]
    assert 0 < w["overhead"]["controller_fraction"] < 1
    md = (tmp_path / "bench.md").read_text()
    assert "| attribution |" in md and "adaptive / oracle" in md
    assert (tmp_path / "ecm.png").stat().st_size > 0 and (tmp_path / "calibration.png").stat().st_size > 0
    assert result["wall_seconds"] > 0
