"""SDS-3D: the gradient estimate is unbiased under every policy at frozen parameters."""

import math

import pytest
import torch

pytest.importorskip("diffusers")

from carv_adapt import HierarchicalEstimator, UniformProposal, defensive_mixture, teacher_weight_proposal  # noqa: E402
from carv_adapt.proposals import TargetMeasure  # noqa: E402
from carv_adapt.stats import Welford  # noqa: E402
from carv_adapt.workloads.sds3d import SDS3DConfig, SDS3DWorkload  # noqa: E402


@pytest.fixture(scope="module")
def workload():
    return SDS3DWorkload(SDS3DConfig(grid_size=8, resolution=16, samples_per_ray=8, batch_size=2, seed=3))


def _projected(wl, scene, policy, R, proj, seed):
    g = torch.Generator().manual_seed(seed)
    acc = Welford()
    for _ in range(R):
        acc.update(proj @ wl.gradient(scene, policy.plan(), g).double())
    return acc


@pytest.mark.slow
def test_sds3d_gradient_unbiased_under_every_policy(workload):
    wl = workload
    scene = wl.new_scene()
    with torch.no_grad():  # a frozen, non-trivial scene
        for p in scene.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    P = sum(p.numel() for p in scene.parameters())
    proj = torch.randn(6, P, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / math.sqrt(P)
    target = TargetMeasure(1000, wl.config.t_min, wl.config.t_max)
    prior = defensive_mixture(teacher_weight_proposal(target, wl.weight, wl.teacher.alphas_cumprod), 0.2)
    ref = _projected(
        wl,
        scene,
        HierarchicalEstimator(UniformProposal(target), N=2, K=6, stratification="iid", seed=10),
        400,
        proj,
        20,
    )
    policies = {
        "uniform iid K=1": HierarchicalEstimator(UniformProposal(target), N=2, K=1, stratification="iid", seed=11),
        "uniform stratified K=4": HierarchicalEstimator(UniformProposal(target), N=2, K=4, seed=12),
        "uniform lattice+antithetic K=2": HierarchicalEstimator(
            UniformProposal(target), N=2, K=2, stratification="lattice", antithetic=True, seed=16
        ),
        "IS iid K=4": HierarchicalEstimator(prior, N=2, K=4, stratification="iid", seed=13),
        "IS global K=1": HierarchicalEstimator(prior, N=2, K=1, stratification="global", seed=14),
        "IS stratified K=3": HierarchicalEstimator(prior, N=2, K=3, seed=15),
    }
    R = 80
    for i, (name, pol) in enumerate(policies.items()):
        acc = _projected(wl, scene, pol, R, proj, 30 + i)
        se_p = torch.tensor(acc_var_per_dim(acc, R))
        z = (acc.mean - ref.mean) / torch.sqrt(se_p + torch.tensor(acc_var_per_dim(ref, 200)))
        assert float(z.abs().max()) < 4.0, (name, z)


def acc_var_per_dim(acc, R):
    """Per-coordinate squared standard error of the mean (Welford keeps only the trace, so recompute)."""
    return acc.per_dim_variance() / R


@pytest.mark.slow
def test_sds3d_control_variate_is_wired_exact_and_charged():
    """docs/theory.md §14: the Gaussian surrogate fitted to the encoded digits has an exact conditional mean (guided,
    per class); a controller run observes the control, charges the "surrogate" stage as inner cost and records the
    coefficients; a plan with coefficients and one without give the same gradient when beta = 0."""
    from dataclasses import replace

    from carv_adapt import AdaptiveController, check_control_variate

    cfg = SDS3DConfig(grid_size=8, resolution=16, samples_per_ray=8, batch_size=2, seed=3, control_variate="gaussian")
    wl = SDS3DWorkload(cfg)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.randint(20, 980, (2, 3), generator=g)
    check_control_variate(wl.surrogate, z, t, torch.full((2,), cfg.digit), samples=256)
    ctrl = AdaptiveController(num_timesteps=1000, t_min=20, t_max=980, batch_size=2, warmup_steps=4, refit_every=2)
    res = wl.run(6, controller=ctrl)
    assert all("surrogate" in r.seconds for r in res.records)
    assert ctrl.costs.roles["surrogate"] == "inner" and float(ctrl.control.count.sum()) > 0
    assert "cv_beta" in ctrl.history[-1].extra
    scene = wl.new_scene()
    plan = HierarchicalEstimator(UniformProposal(TargetMeasure(1000, 20, 980)), N=2, K=2, seed=1).plan()
    zero = replace(plan, cv_beta=torch.zeros(2, 2, dtype=torch.float64))
    a = wl.gradient(scene, plan, torch.Generator().manual_seed(5))
    b = wl.gradient(scene, zero, torch.Generator().manual_seed(5))
    assert torch.allclose(a, b, atol=1e-6)
