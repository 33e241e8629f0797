"""Conformance suite every proposal family passes (STYLE §14); sampling uses only the given generator."""

import pytest
import torch

from carv_adapt.proposals import (
    BinnedProposal,
    PmfProposal,
    TargetMeasure,
    UniformProposal,
    WeightedProposal,
    defensive_mixture,
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


def test_sampling_is_reproducible_and_uses_only_the_generator():
    prop = PROPOSALS["binned"]
    torch.manual_seed(123)
    a = prop.sample(4, 6, torch.Generator().manual_seed(9), "stratified")
    torch.manual_seed(456)
    b = prop.sample(4, 6, torch.Generator().manual_seed(9), "stratified")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
