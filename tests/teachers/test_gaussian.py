"""The analytic teacher: schedules, exact eps-prediction, and exact SDS statistics vs seeded Monte Carlo."""

import math

import pytest
import torch

from carv_adapt.proposals import TargetMeasure
from carv_adapt.teachers import (
    GaussianMixtureTeacher,
    GaussianTeacher,
    ddpm_alphas_cumprod,
    exact_sds_expectation,
    exact_sds_statistics,
    sds_integrand,
    sds_weight,
)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_matches_diffusers(schedule):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule).alphas_cumprod
    assert torch.equal(ddpm_alphas_cumprod(1000, beta_schedule=schedule).float(), ref)


def test_gaussian_equals_one_component_mixture():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(5, generator=g, dtype=torch.float64)
    gt = GaussianTeacher(mean, std=0.6)
    gm = GaussianMixtureTeacher(torch.ones(1), mean[None], torch.tensor([0.6]))
    z = torch.randn(7, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (7,), generator=g)
    assert torch.allclose(gt.predict_eps(z, t), gm.predict_eps(z, t), atol=1e-12)


def test_mixture_eps_is_minus_sigma_times_autograd_score():
    g = torch.Generator().manual_seed(1)
    w, mu, s = (
        torch.tensor([0.2, 0.5, 0.3]),
        torch.randn(3, 4, generator=g, dtype=torch.float64) * 2,
        torch.tensor([0.3, 0.8, 0.5]),
    )
    teacher = GaussianMixtureTeacher(w, mu, s)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.tensor([0, 10, 100, 400, 800, 999])
    a2 = teacher.alphas_cumprod[t][:, None]
    var = a2 * s.double()[None] ** 2 + (1 - a2)  # B x M
    diff = z[:, None, :] - a2.sqrt()[:, :, None] * mu[None]
    logp = torch.logsumexp(w.double().log() - 0.5 * (diff**2).sum(-1) / var - 2.0 * var.log(), dim=1)
    (score,) = torch.autograd.grad(logp.sum(), z)
    expected = -(1 - a2).sqrt() * score
    assert torch.allclose(teacher.predict_eps(z.detach(), t), expected, atol=1e-10)


def test_exact_expectation_and_statistics_match_monte_carlo():
    g = torch.Generator().manual_seed(2)
    D, R = 3, 20000
    teacher = GaussianTeacher(torch.tensor([0.5, -1.0, 2.0]), std=0.7)
    x_mean, x_sd = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), 0.4
    target = TargetMeasure(1000, 20, 980)
    pi, w = target.pmf(), sds_weight(teacher.alphas_cumprod, "sigma2")
    stats = exact_sds_statistics(teacher, x_mean, D * x_sd**2, pi, w)
    p = (pi * (torch.arange(1000) + 50.0)).double()
    p = p / p.sum()
    # Joint draws: x, t ~ p, eps; weighted contributions rho f.
    x = x_mean + x_sd * torch.randn(R, D, generator=g, dtype=torch.float64)
    t = torch.multinomial(p, R, replacement=True, generator=g)
    eps = torch.randn(R, 1, D, generator=g, dtype=torch.float64)
    f = sds_integrand(teacher, x, t[:, None], eps, w)[:, 0]
    rho = (pi / p)[t][:, None]
    G = exact_sds_expectation(teacher, x_mean, pi, w)
    est = rho * f
    z = (est.mean(0) - G) / (est.std(0) / math.sqrt(R))
    assert float(z.abs().max()) < 4
    # m(t) at a few fixed timesteps.
    for tt in (30, 300, 900):
        ft = sds_integrand(teacher, x, torch.full((R, 1), tt), eps, w)[:, 0]
        sq = (ft**2).sum(1)
        assert abs(float(sq.mean()) - float(stats.m()[tt])) < 4 * float(sq.std()) / math.sqrt(R)
    # Total variance of one i.i.d. draw = sigma_B^2 + sigma_W^2(p) (SPEC §2 with N = K = 1).
    total = float(((est - G) ** 2).sum(1).mean())
    se = float(((est - G) ** 2).sum(1).std()) / math.sqrt(R)
    assert abs(total - (stats.sigma_b2 + stats.sigma_w2(p))) < 4 * se
