"""`carv-adapt inspect` and `carv-adapt fit` on a synthetic log: report numbers match the log, PNGs exist."""

import pytest
import torch

from carv_adapt import AdaptiveController
from carv_adapt.cli import main
from carv_adapt.fit import JsonlRefitLog, read_refit_log
from carv_adapt.policy import Policy
from carv_adapt.workloads import SyntheticNested


@pytest.fixture(scope="module")
def log_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "refits.jsonl"
    c = AdaptiveController(
        num_timesteps=200,
        num_bins=10,
        batch_size=8,
        warmup_steps=20,
        refit_every=10,
        logger=JsonlRefitLog(path),
        seed=0,
    )
    wl = SyntheticNested(c.target, c.edges, 0.3 + 3 * torch.linspace(0, 1, 10, dtype=torch.float64) ** 2)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        p = c.plan()
        c.observe(p, wl.contributions(p, g), costs=wl.costs(p))
        c.step()
    return path


def test_inspect_log_report_matches_and_writes_pngs(log_path, tmp_path, capsys):
    assert main(["inspect", str(log_path), "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    last = read_refit_log(log_path)[-1]
    assert f"K = {last.K} (N = {last.N})" in text
    assert f"sigma_B^2 = {last.sigma_b2:.4g}" in text and f"predicted ECM = {last.predicted_ecm:.4g}" in text
    for m in last.profile:
        assert f"{m:10.4g}" in text
    for name in ("profile.png", "proposal_history.png", "k_ecm.png", "costs.png"):
        assert (tmp_path / name).stat().st_size > 2000


def test_fit_writes_a_loadable_policy_and_preview(log_path, tmp_path, capsys):
    pytest.importorskip("botorch")
    out = tmp_path / "policy.json"
    assert (
        main(["fit", str(log_path), "-o", str(out), "--num-timesteps", "200", "--trials", "6", "--replay-steps", "60"])
        == 0
    )
    pol = Policy.load(out)
    assert pol.proposal.kind == "binned" and 1 <= pol.allocation.K <= 64
    assert "trials" in capsys.readouterr().out
    assert main(["inspect", str(out), "--out", str(tmp_path / "p"), "--preview", "4000"]) == 0
    assert (tmp_path / "p" / "proposal.png").stat().st_size > 2000
