"""The closed-form fit recovers known K* and p* from a refit record, also through a JSONL log."""

import pytest
import torch

from carv_adapt import ConfigError
from carv_adapt.fit import JsonlRefitLog, read_refit_log
from carv_adapt.fit.closed_form import policy_from_record
from carv_adapt.variance import total_variation
from tests.helpers import synthetic_record


def test_closed_form_fit_recovers_known_k_and_proposal(tmp_path):
    wl, rec = synthetic_record()
    oracle = wl.oracle(alpha=0.1)
    pol = policy_from_record(rec, num_timesteps=200, alpha=0.1)
    assert pol.allocation.K == oracle.K
    assert total_variation(torch.tensor(pol.proposal.probs, dtype=torch.float64), oracle.p) < 1e-9
    # And through a JSONL log written by the logger the controller uses.
    log = JsonlRefitLog(tmp_path / "log.jsonl")
    log(rec)
    log(rec)
    back = read_refit_log(tmp_path / "log.jsonl")
    assert back == [rec, rec]
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1"):
        read_refit_log(tmp_path / "bad.jsonl")
