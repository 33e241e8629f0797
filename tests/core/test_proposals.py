"""Conformance suite every proposal passes (STYLE §14), and the stratified samplers (SPEC §6)."""

import pytest
import torch

from carv_adapt.errors import ConfigError
from carv_adapt.proposals import (
    BinnedProposal,
    PmfProposal,
    TargetMeasure,
    UniformProposal,
    WeightedProposal,
    defensive_mixture,
    draw_uniforms,
    teacher_weight_proposal,
)

T = 50
TARGET = TargetMeasure(T, t_min=3, t_max=44)


def _proposals():
    edges = TARGET.bin_edges(7)
    probs = torch.tensor([0.3, 0.05, 0.1, 0.2, 0.15, 0.1, 0.1])
    abar = torch.linspace(0.999, 0.01, T, dtype=torch.float64)
    binned = BinnedProposal(TARGET, edges, probs)
    return {
        "uniform": UniformProposal(TARGET),
        "binned": binned,
        "weighted": WeightedProposal(TARGET, torch.linspace(0.1, 2.0, T)),
        "mixture": defensive_mixture(binned, 0.2),
        "teacher_weight": teacher_weight_proposal(TARGET, 1 - abar, abar),
        "pmf": PmfProposal(TARGET, torch.arange(T, dtype=torch.float64) % 5 + 1),
    }


PROPOSALS = _proposals()


@pytest.mark.parametrize("name", list(PROPOSALS))
def test_pmf_sums_to_one_and_covers_target(name):
    p = PROPOSALS[name].pmf()
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert bool((p[TARGET.pmf() > 0] > 0).all())


@pytest.mark.parametrize("name", list(PROPOSALS))
def test_quantile_inverts_cdf(name):
    prop = PROPOSALS[name]
    cdf = prop.cdf()
    support = torch.nonzero(prop.pmf() > 0).flatten()
    # Just below each CDF step maps to that timestep; the step itself maps to the next one.
    lo = torch.cat([torch.zeros(1, dtype=torch.float64), cdf[:-1]])
    u = lo[support] + 0.5 * prop.pmf()[support]
    assert torch.equal(prop.quantile(u), support)


@pytest.mark.parametrize("name", list(PROPOSALS))
def test_weights_make_expectations_exact(name):
    prop = PROPOSALS[name]
    h = torch.sin(torch.arange(T, dtype=torch.float64)) + 2.0
    t = torch.arange(T)
    exact = float((TARGET.pmf() * h).sum())
    assert float((prop.pmf() * prop.weights(t) * h).sum()) == pytest.approx(exact, rel=1e-12)


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


def test_sampling_is_reproducible_and_uses_only_the_generator():
    prop = PROPOSALS["binned"]
    torch.manual_seed(123)
    a = prop.sample(4, 6, torch.Generator().manual_seed(9), "stratified")
    torch.manual_seed(456)
    b = prop.sample(4, 6, torch.Generator().manual_seed(9), "stratified")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_inputs_raise():
    with pytest.raises(ConfigError, match="t_min"):
        TargetMeasure(10, t_min=8, t_max=3)
    with pytest.raises(ConfigError, match="positive mass wherever the target"):
        PmfProposal(TARGET, (torch.arange(T) < 10).double()).weights(torch.tensor([20]))
    with pytest.raises(ConfigError, match="stratification"):
        draw_uniforms(1, 1, "sobol", torch.Generator())  # type: ignore[arg-type]
