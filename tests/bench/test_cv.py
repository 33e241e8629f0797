"""The "+CV" ablation parts (docs/theory.md §14) on the analytic teacher: the pilot fits the coefficients and
reports per bin; the paired comparison measures the variance removed on identical draws."""

import pytest
import torch

from carv_adapt.bench.cv import ControlledEstimator, control_variate_pilot, paired_cv
from carv_adapt.proposals import TargetMeasure, UniformProposal
from carv_adapt.teachers import GaussianSurrogate, GaussianTeacher, sds_integrand, sds_weight

TEACHER = GaussianTeacher(torch.tensor([0.5, -1.0, 2.0]), std=0.7)
W = sds_weight(TEACHER.alphas_cumprod)
CV = GaussianSurrogate(TEACHER.alphas_cumprod, torch.tensor([[0.4, -0.9, 1.8]]), torch.tensor([[0.6, 0.8, 0.7]]), W)
TARGET = TargetMeasure(1000, 20, 980)


def _draws(plan):
    g = torch.Generator().manual_seed(plan.noise_seed ^ 1)  # the outer draws follow the plan, as the adapter's do
    x = 0.4 * torch.randn(plan.N, 3, generator=g, dtype=torch.float64)
    eps = plan.noise((3,), dtype=torch.float64)
    return (sds_integrand(TEACHER, x, plan.t, eps, W), *CV.evaluate(x, plan.t, eps))


def _estimate(plan):
    f, g, mu = _draws(plan)
    return plan.weighted_mean(plan.controlled(f, g, mu))


def test_pilot_and_paired_comparison_on_the_analytic_teacher():
    edges = TARGET.bin_edges(10)
    pi_b = TARGET.bin_mass(edges)
    pol, report = control_variate_pilot(
        lambda state: _draws, {}, 200, UniformProposal(TARGET), 2, 4, edges, pi_b, pi_b, seed=0
    )
    assert isinstance(pol, ControlledEstimator) and report["pilot_draws"] == 800
    assert len(report["beta"]) == 10 and 0 < report["share_of_second_moment_removed"] < 1
    assert report["correlation"][0] > 0.9  # low noise: the Gaussian's linear response is almost the teacher's
    paired = paired_cv(_estimate, pol, 200)
    lo, hi = paired["variance_ratio_ci90"]
    assert lo <= paired["variance_ratio"] <= hi < 1.0


@pytest.mark.slow
def test_quick_sds3d_ablation_measures_cv_after_strat():
    pytest.importorskip("diffusers")
    from carv_adapt.bench.ablation import AblationSettings, ablate

    torch.set_num_threads(1)
    s = AblationSettings(steps=6, replications=4, pilot_outer=4, pilot_inner=4, cost_Ks=(1, 4), cost_reps=1,
                         iddpm_history=1, k_max=8, quick=True, checkpoints=(1.0,), cv_pilot_outer=4)  # fmt: skip
    (c,) = ablate("sds3d", s)["checkpoints"]
    names = [r["variant"] for r in c["variants"]]
    assert names.index("+CV") > names.index("+strat")  # "+outer" may sit between them
    cv = next(r for r in c["variants"] if r["variant"] == "+CV")
    assert cv["W"] > 0 and cv["ecm_ci90"][0] <= cv["ecm"] <= cv["ecm_ci90"][1]
    v = c["control_variate"]
    assert len(v["beta"]) == len(c["pilot"]["edges"]) - 1 and v["paired"]["R"] == 4
