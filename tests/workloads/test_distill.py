"""The distillation workload: the generator gradient is unbiased under every policy."""

import math

import pytest
import torch

pytest.importorskip("diffusers")

from carv_adapt import HierarchicalEstimator, UniformProposal  # noqa: E402
from carv_adapt.stats import Welford  # noqa: E402
from carv_adapt.workloads.distill import DistillConfig, DistillWorkload  # noqa: E402
from tests.workloads.helpers import TARGET  # noqa: E402
from tests.workloads.helpers import policies as _policies  # noqa: E402
from tests.workloads.helpers import z_scores as _z  # noqa: E402


@pytest.mark.slow
def test_distill_generator_gradient_unbiased_under_every_policy():
    wl = DistillWorkload(DistillConfig(batch_size=2, seed=1))
    gen, fake = wl.new_models()
    with torch.no_grad():  # frozen, non-trivial generator and a fake score that differs from the teacher
        for p in list(gen.parameters()) + list(fake.parameters()):
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    P = sum(p.numel() for p in gen.parameters())
    proj = torch.randn(5, P, generator=torch.Generator().manual_seed(2), dtype=torch.float64) / math.sqrt(P)

    def run(policy, R, seed):
        g, acc = torch.Generator().manual_seed(seed), Welford()
        for _ in range(R):
            acc.update(proj @ wl.gradient(gen, fake, policy.plan(), g).double())
        return acc

    ref = run(HierarchicalEstimator(UniformProposal(TARGET), N=2, K=4, stratification="iid", seed=3), 150, 4)
    for i, (name, pol) in enumerate(_policies(wl.weight, wl.teacher.alphas_cumprod, 2).items()):
        z = _z(run(pol, 60, 10 + i), 60, ref, 150)
        assert float(z.abs().max()) < 4.0, (name, z)


@pytest.mark.slow
def test_distill_run_to_compute_trains_as_run_and_scores_only_at_checkpoints():
    wl = DistillWorkload(DistillConfig(batch_size=2, seed=1))
    plain = wl.run(3)
    calls = []

    def score(gen):
        calls.append(1)
        return float(sum(p.detach().double().sum() for p in gen.parameters()))

    # One unit per step: checkpoints at 0, 1 and 3 steps (0.4 and 0.5 of the budget both fall after step 1).
    run = wl.run_to_compute(lambda N, K, probed: 1.0, 3.0, (0.0, 0.4, 0.5, 1.0), {"s": score})
    assert [c.step for c in run.checkpoints] == [0, 1, 1, 3] and len(calls) == 3
    assert run.costs == [1.0, 1.0, 1.0] and not run.exhausted
    for k, v in plain.final_state.items():  # scoring between steps changes nothing in the training
        assert torch.equal(run.final_state[k], v), k
    assert run.checkpoints[-1].scores["s"] == pytest.approx(score(wl.generator_from_state(plain.final_state)))
