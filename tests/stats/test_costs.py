"""CostTracker recovers the marginal costs; StageTimer accumulates on CPU and uses CUDA events on a GPU."""

import pytest
import torch

from carv_adapt.errors import ConfigError
from carv_adapt.stats import CostTracker, StageTimer


def test_cost_tracker_recovers_marginal_cost_and_validates():
    ct = CostTracker()
    for K in (2, 4, 2, 8):
        ct.update(4, K, {"upstream": 0.05 * 4, "teacher": 0.007 + 0.001 * 4 * K, "overhead": 0.003})
    est = ct.compute()
    assert est.c_out == pytest.approx(0.05) and est.c_in == pytest.approx(0.001)
    assert est.c_0 == pytest.approx(0.010)
    with pytest.raises(ConfigError, match="cost of stage 'teacher' must be >= 0 seconds, got -1"):
        ct.update(1, 1, {"teacher": -1.0})
    with pytest.raises(ConfigError, match="unknown cost stage 'render'"):
        ct.update(1, 1, {"render": 1.0})


def test_stage_timer_accumulates_on_cpu():
    t = StageTimer()
    assert not t.uses_cuda_events
    with t:
        sum(range(10000))
    first = t.seconds()
    with t:
        sum(range(10000))
    assert 0 < first < t.seconds()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stage_timer_uses_cuda_events_on_gpu():
    t = StageTimer("cuda")
    assert t.uses_cuda_events
    x = torch.randn(2048, 2048, device="cuda")
    with t:
        for _ in range(10):
            x = x @ x / 2048
    assert t.seconds() > 0
