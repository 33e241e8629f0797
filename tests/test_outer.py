"""Outer-draw designs (docs/theory.md §15): the plan's outer uniforms, unbiasedness, the design's between variance
and its use in ``decide``, on problems with exact answers."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from carv_adapt import AdaptiveController, ConfigError
from carv_adapt.config import parse_config
from carv_adapt.decide import DecisionState, decide
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.outer import layout_of, outer_uniforms
from carv_adapt.proposals import TargetMeasure
from carv_adapt.stats import GroupedVariance
from carv_adapt.stats.costs import CostEstimate
from carv_adapt.stats.grouped import BetweenWithin
from carv_adapt.stats.snapshot import Statistics
from carv_adapt.variance import work_normalized_variance
from carv_adapt.workloads.render import sample_cameras

DESIGNS = ("iid", "stratified", "antithetic")


# ---------------------------------------------------------------------- the uniforms
@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("N", [1, 4, 5])
def test_every_draw_is_marginally_uniform(design, N):
    R = 4000
    u = torch.stack([outer_uniforms(N, 3, seed, design) for seed in range(R)])  # R x N x 3
    assert u.dtype == torch.float64 and bool((u >= 0).all()) and bool((u < 1).all())
    # Per draw and coordinate: mean 1/2 (sd 1/sqrt(12 R)), and the mass below 1/4 (sd sqrt(3/16 / R)).
    z_mean = (u.mean(0) - 0.5) / math.sqrt(1 / 12 / R)
    z_q = ((u < 0.25).double().mean(0) - 0.25) / math.sqrt(0.25 * 0.75 / R)
    assert float(z_mean.abs().max()) < 4 and float(z_q.abs().max()) < 4


def test_stratified_and_antithetic_structure():
    u = outer_uniforms(6, 2, 11, "stratified")
    assert sorted(torch.floor(6 * u[:, 0]).long().tolist()) == list(range(6))  # one draw per stratum
    a = outer_uniforms(5, 3, 11, "antithetic")
    assert torch.allclose(a[1:4:2, 0], torch.remainder(a[0:4:2, 0] + 0.5, 1.0))  # antipodal angle
    assert torch.allclose(a[1:4:2, 1:], 1.0 - a[0:4:2, 1:])  # reflected other coordinates
    iid = outer_uniforms(5, 3, 11, "iid")
    assert torch.equal(a[4], iid[4])  # odd N: the last draw is unpaired, an i.i.d. draw
    # Deterministic, and the leading columns do not depend on d.
    assert torch.equal(outer_uniforms(5, 1, 11, "antithetic"), a[:, :1])
    assert torch.equal(outer_uniforms(6, 2, 11, "stratified"), u)


def test_plans_carry_the_design_and_iid_plans_are_unchanged():
    kw = dict(num_timesteps=100, num_bins=5, batch_size=4, K=2, seed=3)
    plans = {}
    for design in DESIGNS:
        c = AdaptiveController(outer=design, **kw)
        plans[design] = c.plan()
    ref = AdaptiveController(**kw).plan()
    for design, p in plans.items():
        assert p.outer == design and p.outer_u.shape == (4, 2)
        # The outer seed derives from the noise seed: timesteps and noise are the same for every design.
        assert torch.equal(p.t, ref.t) and p.noise_seed == ref.noise_seed
    assert torch.equal(plans["iid"].outer_u, ref.outer_u)
    assert plans["antithetic"].outer_layout().design == "antithetic"


# ---------------------------------------------------------------------- unbiasedness
def mu(u: torch.Tensor, c2: float = 0.5) -> torch.Tensor:
    """The exact problem: the conditional mean ``[sin 2 pi u0 + c2 cos 4 pi u0, u1^2]`` of an outer draw."""
    return torch.stack([torch.sin(2 * math.pi * u[:, 0]) + c2 * torch.cos(4 * math.pi * u[:, 0]), u[:, 1] ** 2], 1)


MU_MEAN = torch.tensor([0.0, 1.0 / 3.0], dtype=torch.float64)


@pytest.mark.parametrize("design", DESIGNS)
def test_the_estimator_is_unbiased_under_each_design(design):
    """f = mu(u) + a(t) eps with a(t) rising in t: the hierarchical estimate's mean is E mu exactly."""
    target = TargetMeasure(50, 0, 49)
    est = HierarchicalEstimator(target=target, N=5, K=3, stratification="stratified", outer=design, seed=7)
    vals = []
    for _ in range(600):
        plan = est.plan()
        a = (0.2 + plan.t.double() / 49.0)[..., None]  # N x K x 1
        f = mu(plan.outer_u)[:, None, :] + a * plan.noise((2,), dtype=torch.float64)
        vals.append(plan.weighted_mean(f))
    v = torch.stack(vals)
    z = (v.mean(0) - MU_MEAN) / (v.std(0) / math.sqrt(len(v)))
    assert float(z.abs().max()) < 4, z


# ---------------------------------------------------------------------- the design's between variance
def exact_between(design: str, N: int, c2: float = 0.5) -> tuple[float, float, float]:
    """``(sigma_B^2 i.i.d., sigma_B^2(design) = N Var(mean_n mu_n), E of its estimate)`` of :func:`mu`, the stratified
    ones by quadrature. The estimate's mean differs from the exact value only for second differences of strata
    (``N >= 3``), by the squared second differences of the stratum means over 6 (docs/theory.md §15.2)."""
    var_u2 = 1 / 5 - 1 / 9
    sb = (1 + c2 * c2) / 2 + var_u2
    if design == "iid":
        return sb, sb, sb
    if design == "antithetic":
        cov = -0.5 + c2 * c2 / 2 - 7 / 90  # sin 2 pi u flips sign, cos 4 pi u does not; Cov(u^2, (1 - u)^2) = -7/90
        exact = ((N - (N % 2)) * (sb + cov) + (N % 2) * sb) / N
        return sb, exact, exact
    x = (np.arange(240_000) + 0.5) / 240_000  # midpoints, 40_000 per stratum
    g = (np.sin(2 * np.pi * x) + c2 * np.cos(4 * np.pi * x)).reshape(N, -1)
    s2, m = g.var(axis=1), g.mean(axis=1)
    exact = float(s2.mean()) + var_u2
    if N < 3:
        return sb, exact, exact
    d2 = m[:-2] - 2 * m[1:-1] + m[2:]
    expect = float(((s2[:-2] + 4 * s2[1:-1] + s2[2:]) / 6 + d2**2 / 6).mean()) + var_u2
    return sb, exact, expect


SLOW = pytest.mark.slow


CASES = [("stratified", 6), ("antithetic", 6), ("antithetic", 5), ("iid", 4)]
CASES += [pytest.param(d, 2, marks=SLOW) for d in ("stratified", "antithetic")]  # successive steps: more steps


@pytest.mark.parametrize("design,N", CASES)
def test_design_between_matches_the_exact_value(design, N):
    """Paired estimates (second differences of adjacent strata, spread of pair means, or successive steps where
    one step does not identify them) recover sigma_B^2(design) and the i.i.d. sigma_B^2 within 4 standard errors;
    second differences of strata over-state it by the curvature of the stratum means (conservative)."""
    g = torch.Generator().manual_seed(5)
    gv = GroupedVariance()
    K, s = 3, 0.3
    for seed in range(3000 if N <= 2 else 800):
        u = outer_uniforms(N, 2, seed, design)
        x = mu(u)[:, None, :] + s * torch.randn((N, K, 2), generator=g, dtype=torch.float64)
        gv.update(x, outer=layout_of(u, design))
    est = gv.compute()
    sb, sb_design, expect = exact_between(design, N)
    # b_iid = (SSB - (N - 1) v + b_design) / N carries b_design's excess over N.
    assert abs(est.sigma_b2 - sb - (expect - sb_design) / N) < 4 * est.sigma_b2_se, (est.sigma_b2, sb)
    if design == "iid":
        assert math.isnan(est.sigma_b2_design)
    else:
        assert abs(est.sigma_b2_design - expect) < 4 * est.sigma_b2_design_se, (est, expect)
        assert sb_design <= expect < 0.7 * sb  # the design lowers the between term; the estimate never under-states
    assert abs(est.sigma_w2 - 2 * s * s) < 4 * est.sigma_w2_se


def test_design_between_estimates_are_weighted_by_their_precision():
    """docs/theory.md §7.10 for an outer design's between estimates: a warm-up of K = 2 steps with a large within
    variance, then K = 16 steps, references set every ten steps. The precision-weighted design pool stays unbiased,
    is far less noisy than the degrees-of-freedom pool, and its standard error does not understate the spread."""
    from carv_adapt.stats.base import reliability_mean_se

    g = torch.Generator().manual_seed(11)
    N, R = 6, 200
    prec, dof, se2 = (torch.empty(R, dtype=torch.float64) for _ in range(3))
    gv = GroupedVariance()
    for r in range(R):
        gv.reset()
        for step in range(40):
            K, s = (2, 2.0) if step < 20 else (16, 1.0)
            u = outer_uniforms(N, 2, 1000 * r + step, "antithetic")
            gv.update(mu(u)[:, None, :] + s * torch.randn((N, K, 2), generator=g, dtype=torch.float64),
                      outer=layout_of(u, "antithetic"))  # fmt: skip
            gv.decay(0.97)
            if step % 10 == 9:
                out = gv.compute()
                gv.set_reference(out.sigma_b2, out.sigma_w2, out.sigma_b2_design)
        out, v = gv.compute(), gv.scalars()
        prec[r], se2[r] = out.sigma_b2_design, out.sigma_b2_design_se**2
        dof[r] = reliability_mean_se(v["dof_bd"], v["dof_bd2"], v["sbd_num"], v["sbd_sq"])[0]
    exact = exact_between("antithetic", N)[2]
    assert abs(float((prec.mean() - exact) / (prec.std() / math.sqrt(R)))) < 4.0
    # Sample variances of R draws each: their ratio's 99.99 % range under equal variances is within a factor 1.7.
    assert float(dof.var() / prec.var()) > 4.0
    assert float(se2.mean() / prec.var()) > 1.0 - 4.0 * math.sqrt(2.0 / (R - 1))


def test_a_first_reference_converts_the_design_pool_without_changing_it_and_old_references_load():
    g = torch.Generator().manual_seed(12)
    gv = GroupedVariance()
    for step in range(12):
        u = outer_uniforms(6, 2, step, "antithetic")
        K = 2 + 2 * (step % 2)
        gv.update(mu(u)[:, None, :] + torch.randn((6, K, 2), generator=g, dtype=torch.float64),
                  outer=layout_of(u, "antithetic"))  # fmt: skip
        gv.decay(0.9)
    before = gv.compute()
    gv.set_reference(before.sigma_b2, before.sigma_w2, before.sigma_b2_design)
    after = gv.compute()
    assert gv.scalars()["dprec_w"] > 0
    assert after.sigma_b2_design == pytest.approx(before.sigma_b2_design, rel=1e-12)
    assert after.sigma_b2_design_se == pytest.approx(before.sigma_b2_design_se, rel=1e-12)
    old = gv.state_dict()
    old["reference"] = old["reference"][:2]  # a checkpoint from before the design's own reference
    resumed = GroupedVariance()
    resumed.load_state_dict(old)
    assert resumed._ref == (gv._ref[0], gv._ref[1], gv._ref[0])


def test_second_differences_of_strata_are_exact_for_a_linear_mean():
    g = torch.Generator().manual_seed(6)
    gv = GroupedVariance()
    for seed in range(800):
        u = outer_uniforms(5, 1, seed, "stratified")
        x = 3.0 * u[:, None, :] + 0.2 * torch.randn((5, 2, 1), generator=g, dtype=torch.float64)
        gv.update(x, outer=layout_of(u, "stratified"))
    est = gv.compute()
    exact = 9.0 / (12 * 25)  # the variance of 3 u on a stratum of width 1/5
    assert abs(est.sigma_b2_design - exact) < 4 * est.sigma_b2_design_se
    assert abs(est.sigma_b2 - 9.0 / 12) < 4 * est.sigma_b2_se


def test_iid_layout_is_bit_identical_to_no_layout():
    g = torch.Generator().manual_seed(0)
    a, b = GroupedVariance(), GroupedVariance()
    for seed in range(20):
        u = outer_uniforms(4, 2, seed, "iid")
        x = torch.randn((4, 3, 5), generator=g)
        a.update(x)
        b.update(x, outer=layout_of(u, "iid"))
    for name in a.state_names:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# ---------------------------------------------------------------------- decide
T, B = 200, 10


def stats_with(sb: float, sb_design: float, sw: float) -> Statistics:
    pi_b = torch.full((B,), 1.0 / B, dtype=torch.float64)
    bw = BetweenWithin(sb, 1e-6, sw, 1e-6, sw, math.nan, 1.0, 1.0, 100.0)
    bw = dataclasses.replace(bw, sigma_b2_design=sb_design, sigma_b2_design_se=1e-6)
    m = torch.full((B,), sw + 1.0, dtype=torch.float64)
    return Statistics(
        pi_b, m, torch.full((B,), 0.01), torch.full((B,), 100.0), bw, None, CostEstimate(0.0, 0.01, 0.001, 10.0)
    )


def test_decide_uses_the_design_between_variance():
    state = DecisionState(
        K=4, N=4, probs=torch.full((B,), 1.0 / B, dtype=torch.float64), proposal_kind="uniform", refits_since_k_change=5
    )
    common = dict(num_timesteps=T, num_bins=B, batch_size=4, stratification="iid", adapt_proposal=False)
    st = stats_with(1.0, 0.25, 50.0)

    def k_best(sb: float) -> int:
        return min(range(1, 65), key=lambda K: work_normalized_variance(sb, 50.0, K, 0.01, 0.001))

    d_iid = decide(st, state, parse_config(None, outer="iid", **common))
    d_st = decide(st, state, parse_config(None, outer="stratified", **common))
    # K* = sqrt(sw / sb * c_out / c_in): a quarter of the between variance doubles K*.
    assert d_iid.state.K == k_best(1.0) == 22 and d_st.state.K == k_best(0.25) == 45
    assert d_st.W_baseline == d_iid.W_baseline  # the baseline keeps i.i.d. outer draws
    assert d_st.W == pytest.approx(work_normalized_variance(0.25, 50.0, 45, 0.01, 0.001))
    assert d_st.ecm > d_iid.ecm and d_st.sigma_b2_design == 0.25
    # Under outer="iid" a design estimate in the statistics changes nothing.
    plain = decide(stats_with(1.0, math.nan, 50.0), state, parse_config(None, outer="iid", **common))
    assert (plain.state.K, plain.W, plain.reasons) == (d_iid.state.K, d_iid.W, d_iid.reasons)
    # Not measured yet: the i.i.d. value is used, and the reason says so.
    d_nan = decide(stats_with(1.0, math.nan, 50.0), state, parse_config(None, outer="antithetic", **common))
    assert d_nan.state.K == 22 and "not measured yet" in d_nan.reason


# ---------------------------------------------------------------------- state and errors
def test_state_dict_round_trips_mid_pairing():
    ctrl = AdaptiveController(num_timesteps=100, num_bins=5, batch_size=2, K=3, outer="antithetic", seed=1)
    g = torch.Generator().manual_seed(2)

    def step(c: AdaptiveController) -> torch.Tensor:
        plan = c.plan()
        f = mu(plan.outer_u)[:, None, :] + 0.3 * torch.randn((2, 3, 2), generator=g, dtype=torch.float64)
        c.observe(plan, f, costs={"upstream": 0.01, "teacher": 0.003})
        c.step()
        return plan.outer_u

    for _ in range(5):
        step(ctrl)
    saved = ctrl.state_dict()
    assert saved["grouped"]["prev_outer"] is not None  # N = 2 antithetic pairs successive steps
    other = AdaptiveController(num_timesteps=100, num_bins=5)
    other.load_state_dict(saved)
    g_state = g.get_state()
    u1 = step(ctrl)
    g.set_state(g_state)
    u2 = step(other)
    assert torch.equal(u1, u2)
    a, b = ctrl.grouped.compute(), other.grouped.compute()
    assert a == b and math.isfinite(a.sigma_b2_design)


def test_unknown_outer_design_is_one_line_config_error():
    with pytest.raises(ConfigError) as e:
        AdaptiveController(outer="sobol")
    assert "outer='sobol'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="outer='halton'"):
        HierarchicalEstimator(outer="halton")
    with pytest.raises(ConfigError, match="d=0"):
        outer_uniforms(3, 0, 1, "iid")


# ---------------------------------------------------------------------- the camera sampler
def test_antithetic_cameras_are_antipodal_on_the_sphere_and_orbits_stay_in_their_zone():
    u = outer_uniforms(6, 2, 3, "antithetic")
    cams = sample_cameras(6, None, 180.0, u=u)
    assert torch.allclose(cams.origins[1::2], -cams.origins[0::2], atol=1e-5)
    orbit = sample_cameras(400, torch.Generator().manual_seed(0), 120.0, min_angle_deg=60.0, axis="up")
    y = orbit.origins[:, 1] / 3.0  # the vertical: within 30 degrees of the horizon
    assert float(y.abs().max()) <= 0.5 + 1e-6
    azimuth = torch.atan2(orbit.origins[:, 0], orbit.origins[:, 2])
    assert float(azimuth.min()) < -3.0 and float(azimuth.max()) > 3.0  # all the way round
    same = sample_cameras(5, torch.Generator().manual_seed(4), 25.0)
    again = sample_cameras(5, torch.Generator().manual_seed(4), 25.0, min_angle_deg=0.0, axis="front")
    assert torch.equal(same.origins, again.origins)


def test_sds3d_cameras_follow_the_plan_and_the_configured_zone():
    from types import SimpleNamespace

    from carv_adapt.teachers.gaussian import ddpm_alphas_cumprod
    from carv_adapt.workloads.sds3d import SDS3DConfig, SDS3DWorkload, _outer_u

    teacher = SimpleNamespace(alphas_cumprod=ddpm_alphas_cumprod(1000))  # only the weight w(t) reads the teacher
    wl = SDS3DWorkload(SDS3DConfig(camera_axis="up", min_angle_deg=60.0, max_angle_deg=120.0), teacher=teacher)
    est = HierarchicalEstimator(N=4, K=2, outer="antithetic", seed=0)
    plan = est.plan()
    cams = wl.cameras(plan.N, None, _outer_u(plan))
    assert torch.allclose(cams.origins[1::2], -cams.origins[0::2], atol=1e-5)  # antipodal views
    assert float(cams.origins[:, 1].abs().max()) <= 3.0 * 0.5 + 1e-5  # within 30 degrees of the horizon
    assert _outer_u(HierarchicalEstimator(N=4, K=2, seed=0).plan()) is None  # iid: the workload's own stream


def test_readme_outer_snippet_runs_and_gives_antipodal_pairs():
    from pathlib import Path

    text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    start = text.index("**Outer-draw designs.**")
    code = text[text.index("```python\n", start) + len("```python\n") :]
    code = code[: code.index("```")]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    eye = scope["eye"]
    assert eye.shape == (4, 3) and torch.allclose(eye[1::2], -eye[0::2], atol=1e-6)
