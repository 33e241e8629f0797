"""The diffusion-head workload: the gradient of both networks is unbiased under every policy; a training step's
two-stage backward and the split-half probe compute the same gradient."""

import copy
import math

import pytest
import torch

from carv_adapt import AdaptiveController, HierarchicalEstimator, UniformProposal
from carv_adapt.stats import Welford
from carv_adapt.workloads.diffusion_head import DiffusionHeadConfig, DiffusionHeadWorkload
from tests.workloads.helpers import TARGET
from tests.workloads.helpers import policies as _policies
from tests.workloads.helpers import z_scores as _z

SMALL = dict(dim=16, depth=1, heads=2, head_width=32, batch_size=2, t_min=20, t_max=980, seed=3)


@pytest.fixture(scope="module")
def workload():
    return DiffusionHeadWorkload(DiffusionHeadConfig(**SMALL))


@pytest.mark.slow
def test_gradient_of_both_networks_unbiased_under_every_policy(workload):
    wl = workload
    m = wl.new_models()
    P_c = sum(p.numel() for p in m.cond.parameters())
    P_h = sum(p.numel() for p in m.head.parameters())
    gen = torch.Generator().manual_seed(2)
    # Five random directions in each parameter group: a bias in either network shows in its own coordinates.
    proj = torch.zeros(10, P_c + P_h, dtype=torch.float64)
    proj[:5, :P_c] = torch.randn(5, P_c, generator=gen, dtype=torch.float64) / math.sqrt(P_c)
    proj[5:, P_c:] = torch.randn(5, P_h, generator=gen, dtype=torch.float64) / math.sqrt(P_h)

    def run(policy, R, seed):
        g, acc = torch.Generator().manual_seed(seed), Welford()
        for _ in range(R):
            acc.update(proj @ wl.gradient(m, policy.plan(), g).double())
        return acc

    ref = run(HierarchicalEstimator(UniformProposal(TARGET), N=2, K=8, stratification="iid", seed=3), 400, 4)
    pols = _policies(torch.ones(1000), wl.teacher.alphas_cumprod, 2)
    assert set(pols) == {"uniform iid K=1", "uniform stratified K=4", "IS iid K=3", "IS global K=1"}
    for i, (name, pol) in enumerate(pols.items()):
        z = _z(run(pol, 200, 10 + i), 200, ref, 400)
        assert float(z.abs().max()) < 4.0, (name, z)


def test_training_step_gradient_and_probe_match_the_estimate(workload):
    wl = workload
    m = wl.new_models()
    before = copy.deepcopy(m)
    ctrl = AdaptiveController(
        num_timesteps=1000, t_min=20, t_max=980, batch_size=2, k_max=8, warmup_steps=4, space="parameter", seed=0
    )
    one_step, _ = wl._stepper(m, ctrl, None)
    plan = ctrl.plan()
    assert plan.K >= 2
    f, sec, probe, step_grad = one_step(plan, 0)
    assert f.shape == (plan.N, plan.K, wl.config.dim + 64) and probe is not None and sec["probe"] > 0
    grad = torch.cat([p.grad.reshape(-1) for p in m.params()])
    ref = wl.gradient(before, plan, torch.Generator().manual_seed(wl.config.seed + 1))
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(step_grad, ref, rtol=1e-4, atol=1e-7)  # what the controller's step statistics take
    # The two half means average to the outer draw's full mean: the probe covers both networks' parameters.
    g_a, g_b = probe
    assert g_a.shape == (plan.N, grad.numel())
    torch.testing.assert_close(((g_a + g_b) / 2).mean(0), ref, rtol=1e-4, atol=1e-7)


def test_per_draw_gradients_average_to_the_estimate(workload):
    wl = workload
    m = wl.new_models()
    plan = HierarchicalEstimator(UniformProposal(TARGET), N=2, K=3, seed=5).plan()
    per_draw, loss = wl.per_draw_gradients(m, plan, torch.Generator().manual_seed(7))
    assert per_draw.shape[:2] == (2, 3) and loss.shape == (2, 3)
    est = wl.gradient(m, plan, torch.Generator().manual_seed(7))
    torch.testing.assert_close(plan.weighted_mean(per_draw.double()).float(), est, rtol=1e-4, atol=1e-7)


def test_bad_config_is_one_clear_error():
    with pytest.raises(ValueError, match="t_min <= t_max"):
        DiffusionHeadWorkload(DiffusionHeadConfig(t_min=900, t_max=100))
    with pytest.raises(ValueError, match="divisible"):
        DiffusionHeadWorkload(DiffusionHeadConfig(dim=18, heads=4)).new_models()


def test_per_example_probe_equals_the_generic_split_half_probe(workload):
    from carv_adapt.probe import split_half_probe

    wl = workload
    m = wl.new_models()
    plan = HierarchicalEstimator(UniformProposal(TARGET), N=3, K=4, seed=6).plan()
    x0, mask, y = wl.outer_batch(3, torch.Generator().manual_seed(8))
    eps = plan.noise((64,))
    g_a, g_b = wl.probe(m, x0, mask, y, plan, eps, torch.Generator().manual_seed(9))
    d = wl.forward(m, x0, mask, y, plan.t, eps)
    r_a, r_b = split_half_probe(d.loss, m.params(), torch.diag_embed(plan.weights_like(d.loss)),
                                torch.Generator().manual_seed(9))  # fmt: skip
    torch.testing.assert_close(g_a, r_a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_b, r_b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_demo_runs_on_the_diffusion_head_with_its_cost_clock(tmp_path):
    from carv_adapt.cli import main
    from tests.test_demo import _check_report

    out = tmp_path / "head"
    args = [
        "demo",
        "--workload",
        "diffusion_head",
        "--steps",
        "12",
        "--replications",
        "3",
        "--quick",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    summary = _check_report(out, "diffusion_head", steps=12)
    # Calibrated by timing: a stage may come out at 0 (the condition net's slope drowns in its fixed cost on a loaded
    # machine), so the check is the clock's form: every cost finite and non-negative, a step costing something.
    assert summary["clock"]["kind"] == "cost_clock"
    costs = summary["clock"]["costs"]
    assert all(math.isfinite(v) and v >= 0 for v in costs.values()), costs
    assert costs["c_0"] + costs["c_out"] + costs["c_in"] > 0
    assert summary["quality_metric"] == "val loss" and summary["higher_is_better"] is False
    assert (out / "views.png").stat().st_size > 1000
