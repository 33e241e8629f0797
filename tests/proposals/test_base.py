"""The stratified uniform draws (docs/theory.md §6) and the target measure's validation."""

import pytest
import torch

from carv_adapt.errors import ConfigError
from carv_adapt.proposals import PmfProposal, TargetMeasure, draw_uniforms

T = 50


TARGET = TargetMeasure(T, t_min=3, t_max=44)


@pytest.mark.parametrize("strat", ["iid", "stratified", "lattice", "global"])
def test_inner_draws_are_uniform_on_average(strat):
    # Unbiasedness needs the average over k of each inner draw's law to be U(0,1) (for every outer draw).
    g = torch.Generator().manual_seed(1)
    u = torch.stack([draw_uniforms(3, 4, strat, g) for _ in range(4000)])  # R x N x K
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    for h, exact in ((lambda v: v, 0.5), (lambda v: v**2, 1 / 3), (lambda v: (v < 0.3).double(), 0.3)):
        per_rep = h(u).mean(dim=2)  # R x N: average over the K inner draws
        se = per_rep.std(dim=0) / per_rep.shape[0] ** 0.5
        z = (per_rep.mean(dim=0) - exact) / se.clamp_min(1e-12)
        assert float(z.abs().max()) < 4.0 or float((per_rep.mean(0) - exact).abs().max()) < 1e-12


def test_stratified_puts_one_draw_per_stratum():
    g = torch.Generator().manual_seed(2)
    u = draw_uniforms(5, 8, "stratified", g)
    assert torch.equal((u * 8).floor().long(), torch.arange(8).expand(5, 8))
    ug = draw_uniforms(4, 3, "global", g)
    assert sorted((ug.flatten() * 12).floor().long().tolist()) == list(range(12))


def test_bad_inputs_raise():
    with pytest.raises(ConfigError, match="t_min"):
        TargetMeasure(10, t_min=8, t_max=3)
    with pytest.raises(ConfigError, match="positive mass wherever the target"):
        PmfProposal(TARGET, (torch.arange(T) < 10).double()).weights(torch.tensor([20]))
    with pytest.raises(ConfigError, match="stratification"):
        draw_uniforms(1, 1, "sobol", torch.Generator())  # type: ignore[arg-type]
