"""BoTorch tuning: finds a known optimum of a cheap noisy objective in a few trials."""

import math

import pytest
import torch

pytest.importorskip("botorch")

from carv_adapt.fit.bayesopt import Param, bayes_optimize  # noqa: E402


@pytest.mark.slow
def test_bo_finds_known_optimum_within_tolerance():
    # W(x, n) = exp((x - 0.3)^2 * 8 + (n - 7)^2 / 20) * (1 + noise): optimum 1.0 at x = 0.3, n = 7.
    space = [Param("x", 0.0, 1.0), Param("n", 1, 20, integer=True)]
    g = torch.Generator().manual_seed(0)

    def objective(p):
        w = math.exp(8 * (p["x"] - 0.3) ** 2 + (p["n"] - 7) ** 2 / 20)
        return w * (1 + 0.01 * float(torch.randn(1, generator=g))), 0.01 * w

    res = bayes_optimize(objective, space, n_trials=14, n_init=5, seed=0)
    best = res.best
    assert len(res.trials) == 14
    assert abs(best.params["x"] - 0.3) < 0.15 and abs(best.params["n"] - 7) <= 3
    assert best.value < 1.25  # within 25 % of the optimum's W
