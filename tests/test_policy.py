"""Policies as files: round trip into a frozen controller, migration, clear errors."""

import json

import pytest
import torch

from carv_adapt import AdaptiveController, ConfigError
from carv_adapt.policy import BinnedSpec, Policy


def test_schema_round_trip_and_frozen_controller(tmp_path):
    pol = Policy(proposal=BinnedSpec(bin_edges=[0, 500, 1000], probs=[0.3, 0.7]), num_bins=2, adaptive=False)
    pol.save(tmp_path / "p.json")
    back = Policy.load(tmp_path / "p.json")
    assert back == pol
    ctrl = AdaptiveController.from_policy(back, warmup_steps=2, refit_every=1)
    for _ in range(6):
        p = ctrl.plan()
        ctrl.observe(p, torch.randn(p.N, p.K, 2), costs={"upstream": 0.1, "teacher": 0.01})
        ctrl.step()
    assert ctrl.K == 1 and torch.allclose(ctrl.state.probs, torch.tensor([0.3, 0.7], dtype=torch.float64))
    out = ctrl.to_policy(adaptive=False).proposal
    assert out.bin_edges == pol.proposal.bin_edges and out.probs == pytest.approx(pol.proposal.probs, abs=1e-12)


def test_migration_and_clear_errors(tmp_path):
    v1 = {
        "schema_version": 1,
        "K": 4,
        "N": 2,
        "bin_edges": [0, 10, 20],
        "probs": [0.25, 0.75],
        "num_timesteps": 20,
        "alpha": 0.2,
    }
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    pol = Policy.load(tmp_path / "v1.json")
    assert pol.allocation.K == 4 and pol.proposal.probs == [0.25, 0.75] and pol.safeguards.alpha == 0.2
    (tmp_path / "bad.json").write_text('{"schema_version": 2, "allocation": {"K": 0}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        Policy.load(tmp_path / "bad.json")
    (tmp_path / "v9.json").write_text('{"schema_version": 9}')
    with pytest.raises(ConfigError, match="schema_version=9 is not supported"):
        Policy.load(tmp_path / "v9.json")
    (tmp_path / "k0.json").write_text('{"schema_version": 2, "allocation": {"K": 0}}')
    with pytest.raises(ConfigError, match="allocation.K=0"):
        Policy.load(tmp_path / "k0.json")
    (tmp_path / "typo.json").write_text('{"schema_version": 2, "stratificaton": "iid"}')
    with pytest.raises(ConfigError, match="stratificaton"):
        Policy.load(tmp_path / "typo.json")
