"""The analytic teacher (docs/theory.md §10): exact eps-prediction, and the exact SDS statistics (docs/theory.md §2,
§5) against seeded Monte Carlo. Every MC check is a z-test, ``|estimate - exact| < 4 standard errors``,
with the standard error measured from the same draws."""

import math

import pytest
import torch

from carv_adapt.errors import ConfigError, ShapeError
from carv_adapt.proposals import TargetMeasure
from carv_adapt.teachers.gaussian import (
    GaussianMixtureTeacher,
    GaussianTeacher,
    exact_sds_expectation,
    exact_sds_statistics,
    exact_second_moment_profile,
    exact_within_between,
    sds_integrand,
    sds_weight,
)

F64 = torch.float64


def _z_ok(samples: torch.Tensor, exact, dim: int = 0) -> torch.Tensor:
    """Per-entry z-scores of the sample mean of i.i.d. ``samples`` (along ``dim``) against ``exact``."""
    n = samples.shape[dim]
    z = (samples.mean(dim) - torch.as_tensor(exact, dtype=F64)) / (samples.std(dim) / math.sqrt(n))
    assert bool(z.isfinite().all()) and float(z.abs().max()) < 4, z
    return z


# --- exact eps-prediction -------------------------------------------------------------------------


def test_gaussian_eps_is_the_closed_form_and_keeps_shape_and_dtype():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 3, generator=g, dtype=F64)  # per-sample shape 2 x 3: B x ... inputs
    teacher = GaussianTeacher(mean, std=0.6)
    z = torch.randn(5, 2, 3, generator=g, dtype=F64)
    t = torch.tensor([0, 1, 250, 700, 999])
    abar = teacher.alphas_cumprod[t].view(-1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    expected = s * (z - a * mean) / (a**2 * 0.36 + s**2)
    assert torch.allclose(teacher.predict_eps(z, t), expected, rtol=1e-12, atol=1e-12)
    out32 = teacher.predict_eps(z.float(), t)
    assert out32.dtype == torch.float32 and torch.allclose(out32.double(), expected, atol=1e-5)
    with pytest.raises(ShapeError):
        teacher.predict_eps(torch.zeros(5, 6), t)


def test_gaussian_equals_one_component_mixture():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(2, 3, generator=g, dtype=F64)
    gt = GaussianTeacher(mean, std=0.6)
    gm = GaussianMixtureTeacher(torch.ones(1), mean.reshape(1, 6), torch.tensor([0.6], dtype=F64))
    z = torch.randn(7, 2, 3, generator=g, dtype=F64)
    t = torch.randint(0, 1000, (7,), generator=g)
    assert torch.allclose(gt.predict_eps(z, t), gm.predict_eps(z, t), rtol=1e-12, atol=1e-12)


def _mixture(seed: int = 2) -> GaussianMixtureTeacher:
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(3, 2, generator=g, dtype=F64)
    return GaussianMixtureTeacher(torch.tensor([0.2, 0.5, 0.3]), means, torch.tensor([0.3, 0.8, 0.5]))


def test_mixture_eps_is_minus_sigma_times_autograd_score():
    teacher = _mixture()
    g = torch.Generator().manual_seed(3)
    # Ordinary points, plus points far from every mode where naive densities underflow to 0 / 0.
    z = torch.cat([torch.randn(6, 2, generator=g, dtype=F64), torch.tensor([[60.0, -80.0], [-300.0, 5.0]])])
    z.requires_grad_(True)
    t = torch.tensor([0, 10, 100, 400, 800, 999, 0, 500])
    abar = teacher.alphas_cumprod[t][:, None]
    var = abar * teacher.stds**2 + (1 - abar)  # B x M
    diff = z[:, None, :] - abar.sqrt()[:, :, None] * teacher.means
    log_density = torch.logsumexp(teacher.weights.log() - 0.5 * (diff**2).sum(-1) / var - var.log(), dim=1)
    (score,) = torch.autograd.grad(log_density.sum(), z)
    eps_hat = teacher.predict_eps(z.detach(), t)
    assert bool(eps_hat.isfinite().all())
    assert torch.allclose(eps_hat, -(1 - abar).sqrt() * score, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("t", [50, 300, 700])
def test_mixture_eps_is_the_conditional_mean_of_the_noise(t):
    # Independent of the score formula: eps_hat(x_t) = E[eps | x_t] iff the residual eps_hat - eps is
    # orthogonal to every function of x_t. Check E[r] = 0 and E[r g(x_t)] = 0 for g = x_t and tanh(2 x_t).
    teacher, R = _mixture(), 20000
    g = torch.Generator().manual_seed(4 + t)
    j = torch.multinomial(teacher.weights, R, replacement=True, generator=g)
    x0 = teacher.means[j] + teacher.stds[j, None] * torch.randn(R, 2, generator=g, dtype=F64)
    eps = torch.randn(R, 2, generator=g, dtype=F64)
    tt = torch.full((R,), t)
    x_t = teacher.add_noise(x0, eps, tt)
    r = teacher.predict_eps(x_t, tt) - eps
    feats = torch.cat([torch.ones(R, 1, dtype=F64), x_t, torch.tanh(2 * x_t)], dim=1)  # R x 5
    _z_ok((r[:, :, None] * feats[:, None, :]).reshape(R, -1), 0.0)


# --- exact SDS statistics vs Monte Carlo ----------------------------------------------------------

TEACHER = GaussianTeacher(torch.tensor([0.5, -1.0, 2.0]), std=0.7)
TARGET = TargetMeasure(1000, t_min=20, t_max=980)
X_MEAN = torch.tensor([1.0, 0.0, 0.5], dtype=F64)
X_SCALE = torch.tensor([0.9, 0.5, 0.3], dtype=F64)  # per-coordinate sd of the outer draws
X_COV_TRACE = float((X_SCALE**2).sum())


def _outer(n: int, g: torch.Generator) -> torch.Tensor:
    # Uniform and anisotropic, not Gaussian: the exact formulas may use only the mean and tr Cov.
    return X_MEAN + X_SCALE * math.sqrt(3) * (2 * torch.rand(n, 3, generator=g, dtype=F64) - 1)


def _setup(kind):
    pi, weight = TARGET.pmf(), sds_weight(TEACHER.alphas_cumprod, kind)
    p = pi * (0.2 + TEACHER.alphas_cumprod.sqrt())  # a proposal unlike pi, positive on its support
    return pi, p / p.sum(), weight


def _draws(n: int, k: int, p: torch.Tensor, pi: torch.Tensor, weight, g: torch.Generator):
    """``n`` outer draws with ``k`` i.i.d. inner draws each: ``rho f``, ``n x k x 3``."""
    x = _outer(n, g)
    t = torch.multinomial(p, n * k, replacement=True, generator=g).reshape(n, k)
    eps = torch.randn(n, k, 3, generator=g, dtype=F64)
    return (pi / p)[t][..., None] * sds_integrand(TEACHER, x, t, eps, weight)


@pytest.mark.parametrize("kind", ["ones", "sigma2"])
def test_exact_expectation_and_total_variance(kind):
    pi, p, weight = _setup(kind)
    G = exact_sds_expectation(TEACHER, X_MEAN, pi, weight)
    est = _draws(40000, 1, p, pi, weight, torch.Generator().manual_seed(5))[:, 0]
    _z_ok(est, G)
    # One draw (N = K = 1) has variance sigma_B^2 + sigma_W^2(p) (docs/theory.md §2).
    stats = exact_within_between(TEACHER, X_MEAN, X_COV_TRACE, pi, p, weight)
    _z_ok(((est - G) ** 2).sum(1), stats.sigma_b2 + stats.sigma_w2)


@pytest.mark.parametrize("kind", ["ones", "sigma2"])
def test_exact_second_moment_profile(kind):
    _, _, weight = _setup(kind)
    g = torch.Generator().manual_seed(6)
    ts = torch.tensor([0, 20, 100, 300, 500, 700, 900, 999])
    R = 20000
    x = _outer(R, g)
    eps = torch.randn(R, len(ts), 3, generator=g, dtype=F64)
    f = sds_integrand(TEACHER, x, ts.expand(R, -1), eps, weight)
    m = exact_second_moment_profile(TEACHER, X_MEAN, X_COV_TRACE, weight)
    assert m.shape == (1000,)
    _z_ok((f**2).sum(-1), m[ts])


@pytest.mark.parametrize("kind", ["ones", "sigma2"])
def test_exact_sigma_b2(kind):
    # Two independent inner means A_n, B_n of the same x_n are unbiased for mu(x_n) and independent given
    # x_n, so E <A_n - G, B_n - G> = E ||mu(x) - G||^2 = sigma_B^2 exactly, for any inner sample size.
    pi, p, weight = _setup(kind)
    N, K = 4000, 32
    f = _draws(N, 2 * K, p, pi, weight, torch.Generator().manual_seed(7))
    G = exact_sds_expectation(TEACHER, X_MEAN, pi, weight)
    A, B = f[:, :K].mean(1) - G, f[:, K:].mean(1) - G
    stats = exact_within_between(TEACHER, X_MEAN, X_COV_TRACE, pi, p, weight)
    _z_ok((A * B).sum(1), stats.sigma_b2)
    assert stats.sigma_b2 > 0


@pytest.mark.parametrize("kind", ["ones", "sigma2"])
@pytest.mark.parametrize("proposal", ["pi", "other"])
def test_exact_sigma_w2(kind, proposal):
    # Per outer draw, the unbiased sample variance of its K inner contributions estimates
    # tr Cov(rho f | x_n); its mean over n estimates sigma_W^2(p).
    pi, p, weight = _setup(kind)
    p = pi if proposal == "pi" else p
    f = _draws(4000, 8, p, pi, weight, torch.Generator().manual_seed(8))
    within = ((f - f.mean(1, keepdim=True)) ** 2).sum((1, 2)) / (f.shape[1] - 1)
    stats = exact_within_between(TEACHER, X_MEAN, X_COV_TRACE, pi, p, weight)
    _z_ok(within, stats.sigma_w2)
    m = exact_second_moment_profile(TEACHER, X_MEAN, X_COV_TRACE, weight)
    assert stats.sigma_w2 + stats.M2 == pytest.approx(float((pi**2 / p * m).nan_to_num().sum()), rel=1e-12)


def test_statistics_holder_agrees_with_the_pure_functions():
    pi, p, weight = _setup("sigma2")
    holder = exact_sds_statistics(TEACHER, X_MEAN, X_COV_TRACE, pi, weight)
    exact = exact_within_between(TEACHER, X_MEAN, X_COV_TRACE, pi, p, weight)
    assert torch.equal(holder.m(), exact_second_moment_profile(TEACHER, X_MEAN, X_COV_TRACE, weight))
    assert (holder.sigma_b2, holder.sigma_w2(p), holder.M2) == (exact.sigma_b2, exact.sigma_w2, exact.M2)


def test_exact_statistics_reject_bad_inputs():
    pi, p, weight = _setup("ones")
    no_cover = pi.clone()
    no_cover[500:] = 0
    with pytest.raises(ConfigError, match="p must be > 0"):
        exact_within_between(TEACHER, X_MEAN, X_COV_TRACE, pi, no_cover / no_cover.sum(), weight)
    with pytest.raises(ConfigError, match="pmf"):
        exact_sds_expectation(TEACHER, X_MEAN, 2 * pi, weight)
    with pytest.raises(ShapeError):
        exact_second_moment_profile(TEACHER, X_MEAN[:2], X_COV_TRACE, weight)
    with pytest.raises(ShapeError):
        exact_sds_expectation(TEACHER, X_MEAN, pi, weight[:10])
