"""DDPM schedules: bit-identical to diffusers' schedulers; bad configurations rejected."""

import pytest
import torch

from carv_adapt.errors import ConfigError
from carv_adapt.teachers.schedules import ddpm_alphas_cumprod

F64 = torch.float64


@pytest.mark.parametrize(
    "T, beta_start, beta_end, schedule",
    [
        (1000, 1e-4, 0.02, "linear"),
        (1000, 1e-4, 0.02, "scaled_linear"),
        (1000, 1e-4, 0.02, "squaredcos_cap_v2"),
        (1000, 0.00085, 0.012, "scaled_linear"),  # Stable Diffusion's config
        (50, 1e-3, 0.05, "linear"),
    ],
)
def test_schedule_matches_diffusers(T, beta_start, beta_end, schedule):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end, beta_schedule=schedule
    ).alphas_cumprod
    ours = ddpm_alphas_cumprod(T, beta_start, beta_end, schedule)
    assert ours.dtype == F64 and ours.shape == (T,)
    assert torch.equal(ours.float(), ref)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_timesteps": 0}, {"beta_schedule": "cosine"}, {"beta_start": 0.03, "beta_end": 0.02}],
)
def test_schedule_rejects_bad_config(kwargs):
    with pytest.raises(ConfigError):
        ddpm_alphas_cumprod(**kwargs)
