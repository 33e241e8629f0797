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


def _run(ct: CostTracker, K: int, load: float, N: int = 4) -> None:
    ct.decay(0.97)
    ct.update(N, K, {"upstream": load * 0.05 * N, "teacher": load * (0.007 + 0.001 * N * K)})


def test_cost_shape_survives_a_change_of_load_while_k_is_held():
    # Warm-up cycles K at one load; then K is held while the machine slows by 20 %. Least squares over the
    # window would read the slowdown as slope (c_0 / c_in off by about a third); the pair contrasts keep it.
    ct = CostTracker()
    for _ in range(6):
        for K in (2, 4, 8, 16):
            _run(ct, K, 1.0)
    for _ in range(200):
        _run(ct, 16, 1.2)
    est = ct.compute()
    assert est.c_0 / est.c_in == pytest.approx(7.0, rel=1e-9)
    assert est.c_out / est.c_in == pytest.approx(50.0, rel=1e-2)
    assert est.c_in == pytest.approx(1.2e-3, rel=1e-2)  # the level follows the current load
    v = ct.scalars()
    from carv_adapt.variance import fit_linear_cost

    a, c = fit_linear_cost(v["steps"], v["in_sx"], v["in_sxx"], v["in_sy"], v["in_sxy"])
    assert not a / c == pytest.approx(7.0, rel=0.2)  # what the plain window fit would have given


def test_cost_shape_from_noisy_steps_is_unbiased():
    # Multiplicative timing noise of 10 % on every step; the intercept-to-slope ratio a / c = 7 is known exactly.
    # The shape is r = sum(w dx v) / sum(w dx u); its estimating equation sum(w dx v) - r sum(w dx u) has mean 0
    # at the true r because the instrument dx carries no noise. Regressing v on the noisy u instead (u v - r u^2)
    # is biased: it shrank r to about 5.8 in this schedule.
    gen = torch.Generator().manual_seed(0)
    plan = [2, 4] * 10 + [8] * 40 + [16] * 60
    scores, ratios = [], []
    for _ in range(200):
        ct = CostTracker()
        for K in plan:
            ct.decay(0.97)
            noise = 1.0 + 0.1 * float(torch.randn((), generator=gen))
            ct.update(2, K, {"upstream": 0.02, "teacher": noise * 1e-3 * (7.0 + 2 * K)})
        v = ct.scalars()
        scores.append(v["in_pxv"] - 7.0 * v["in_pxu"])
        est = ct.compute()
        ratios.append(est.c_0 / est.c_in)
    z = torch.tensor(scores, dtype=torch.float64)
    assert abs(float(z.mean())) < 4 * float(z.std()) / len(scores) ** 0.5
    assert float(torch.tensor(ratios).median()) == pytest.approx(7.0, abs=0.5)  # what the controller reads


def test_cost_tracker_round_trips_the_pending_pair_and_loads_old_checkpoints():
    ct = CostTracker()
    for K in (2, 4, 8):
        _run(ct, K, 1.0)
    state = ct.state_dict()
    twin = CostTracker()
    twin.load_state_dict(state)
    for t in (ct, twin):
        _run(t, 16, 1.0)
    assert twin.compute() == ct.compute()
    old = {k: v for k, v in state.items() if k not in ("prev", "out_pxu", "out_pxv", "in_pxu", "in_pxv")}
    legacy = CostTracker()
    legacy.load_state_dict(old)  # a checkpoint from before the pair sums: least squares until pairs arrive
    assert legacy.compute().c_in == pytest.approx(0.001)


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
