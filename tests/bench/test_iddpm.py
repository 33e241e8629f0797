"""improved-diffusion's loss-second-moment resampler."""

import pytest
import torch

from carv_adapt.bench import LossSecondMomentResampler
from carv_adapt.errors import ConfigError
from carv_adapt.proposals import TargetMeasure


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
