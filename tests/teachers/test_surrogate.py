"""GaussianSurrogate (docs/theory.md §14): the diagonal-Gaussian epsilon prediction, guided and per class, with an
exact conditional mean."""

import pytest
import torch

from carv_adapt import check_control_variate
from carv_adapt.errors import ConfigError, ShapeError
from carv_adapt.teachers import GaussianMixtureTeacher, GaussianSurrogate, sds_weight

MIX = GaussianMixtureTeacher(torch.tensor([0.3, 0.7]), torch.tensor([[1.0, -1.0, 0.5], [-0.5, 0.5, 0.0]]),
                             torch.tensor([0.4, 0.6]))  # fmt: skip
W = sds_weight(MIX.alphas_cumprod)


def _eps_diag(x_t, t, m, s, abar):
    a, sg = abar[t].sqrt()[..., None], (1 - abar[t]).sqrt()[..., None]
    return sg * (x_t - a * m) / (a * a * s * s + sg * sg)


def test_guided_surrogate_is_the_guided_gaussian_prediction():
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(400, 3, generator=g, dtype=torch.float64) * torch.tensor([0.5, 1.0, 2.0]) + 1.0
    labels = torch.arange(400) % 2
    lat[labels == 1] += 0.7
    cv = GaussianSurrogate.fit(lat, labels, MIX.alphas_cumprod, weight=W, guidance_scale=3.0)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (2, 5), generator=g)
    eps = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    cond = torch.tensor([1, 0])
    abar = MIX.alphas_cumprod
    x_t = abar[t].sqrt()[..., None] * x[:, None] + (1 - abar[t]).sqrt()[..., None] * eps
    m_c = torch.stack([lat[labels == c].mean(0) for c in (1, 0)])[:, None]
    s_c = torch.stack([lat[labels == c].std(0) for c in (1, 0)])[:, None]
    e_c = _eps_diag(x_t, t, m_c, s_c, abar)
    e_u = _eps_diag(x_t, t, lat.mean(0), lat.std(0), abar)
    expected = W[t][..., None] * (e_u + 3.0 * (e_c - e_u) - eps)
    assert torch.allclose(cv.surrogate(x, t, eps, cond), expected, atol=1e-10)
    check_control_variate(cv, x, t, cond, samples=512)


def test_fit_is_usable_with_any_teacher_schedule_and_checks_its_input():
    g = torch.Generator().manual_seed(1)
    lat = torch.randn(50, 2, 2, generator=g)
    cv = GaussianSurrogate.fit(lat, None, MIX.alphas_cumprod)
    assert cv.means.shape == (1, 2, 2)
    x = torch.randn(3, 2, 2, generator=g)
    t = torch.randint(0, 1000, (3, 2), generator=g)
    g_, mu = cv.evaluate(x, t, torch.randn(3, 2, 2, 2, generator=g))
    assert g_.shape == mu.shape == (3, 2, 2, 2)
    with pytest.raises(ConfigError, match="class 1 has 1 sample"):
        GaussianSurrogate.fit(lat[:3], torch.tensor([0, 0, 1]), MIX.alphas_cumprod)
    with pytest.raises(ConfigError, match="needs null_mean"):
        GaussianSurrogate(MIX.alphas_cumprod, torch.zeros(1, 3), torch.ones(1, 3), guidance_scale=2.0)
    with pytest.raises(ShapeError, match="class indices"):
        cv.conditional_mean(x, t, torch.tensor([0, 1, 0]))
