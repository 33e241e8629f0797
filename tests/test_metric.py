"""The preconditioned metric reads the optimizer's second moments; bad optimizers are clear errors."""

import pytest
import torch

from carv_adapt import AdaptiveController, ConfigError
from carv_adapt.metric import Preconditioner, in_metric


def test_adam_scale_is_one_over_sqrt_vhat_plus_eps():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.9, 0.99), eps=1e-3)
    pre = Preconditioner(opt, [p])
    assert pre.scale() is None  # before the first step: no second moments, the probe is skipped
    p.grad = torch.tensor([1.0, 2.0, 4.0])
    opt.step()
    v_hat = torch.tensor([1.0, 4.0, 16.0])  # (1 - 0.99) g^2 / (1 - 0.99)
    assert torch.allclose(pre.scale(dtype=torch.float64), 1.0 / (v_hat.double().sqrt() + 1e-3))
    g = torch.ones(2, 3)
    a, _ = in_metric((g, g), pre)
    assert torch.allclose(a[0], pre.scale())


def test_preconditioned_metric_needs_an_adaptive_optimizer():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ConfigError, match="optimizer="):
        AdaptiveController(metric="preconditioned")
    with pytest.raises(ConfigError, match="metric='euclidean'"):
        AdaptiveController(metric="preconditioned", optimizer=torch.optim.SGD([p], lr=0.1), params=[p])
    q = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="not optimized"):
        Preconditioner(torch.optim.Adam([p]), [q])


def test_probes_before_the_first_optimizer_step_are_skipped_and_counted():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p])
    ctrl = AdaptiveController(metric="preconditioned", optimizer=opt, params=[p], space="parameter", batch_size=2)
    plan = ctrl.plan()
    g = torch.ones(plan.N, 3)
    ctrl.observe(plan, torch.randn(plan.N, plan.K, 3), probe=(g, g))
    assert ctrl.skipped_probes == 1 and float(ctrl.param_grouped.groups) == 0
