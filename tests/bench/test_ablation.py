"""The ablation's parts: filling improved-diffusion's resampler, and the timed controller wrapper."""

import torch

from carv_adapt.bench.ablation import TimedController, fill_iddpm
from tests.bench.helpers import BINS, T
from tests.bench.helpers import synthetic_draws as _draws
from tests.bench.helpers import synthetic_workload as _wl


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
