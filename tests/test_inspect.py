"""`carv-adapt inspect`: report numbers match the log, PNGs exist, logs and policies are told apart by content."""

import json
import shutil
from pathlib import Path

import pytest

from carv_adapt.cli import main
from carv_adapt.errors import ConfigError
from carv_adapt.fit import read_refit_log

POLICY = Path(__file__).resolve().parents[1] / "policies" / "sds3d.json"


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


def test_inspect_reads_a_json_named_log(log_path, tmp_path, capsys):
    renamed = tmp_path / "refits.json"
    shutil.copy(log_path, renamed)
    assert main(["inspect", str(renamed), "--out", str(tmp_path / "o")]) == 0
    last = read_refit_log(log_path)[-1]
    assert f"K = {last.K} (N = {last.N})" in capsys.readouterr().out
    assert (tmp_path / "o" / "profile.png").exists()


def test_inspect_reads_a_jsonl_named_policy(tmp_path, capsys):
    renamed = tmp_path / "policy.jsonl"
    shutil.copy(POLICY, renamed)
    assert main(["inspect", str(renamed), "--out", str(tmp_path / "o")]) == 0
    assert "policy (schema" in capsys.readouterr().out
    assert (tmp_path / "o" / "proposal.png").exists()


def test_load_inspectable_tells_kinds_apart_by_content(log_path, tmp_path):
    from carv_adapt.inspect import load_inspectable

    as_log = tmp_path / "a.policy"
    as_log.write_text("\n\n" + log_path.read_text())  # leading blank lines: the first non-empty line decides
    policy, log = load_inspectable(as_log)
    assert policy is None and len(log) == len(read_refit_log(log_path))
    compact = tmp_path / "compact.jsonl"
    compact.write_text(json.dumps(json.loads(POLICY.read_text())))  # a one-line policy is still a policy
    policy, log = load_inspectable(compact)
    assert policy is not None and log == []


@pytest.mark.parametrize(
    "content",
    [
        "plain text\n",
        "[1, 2, 3]\n",
        '{"step": 3}\n',  # a JSON object without sigma_b2 and without schema_version
        '{"name": "x"}\n',
        "",
    ],
)
def test_inspect_rejects_other_content_naming_path_and_expectation(tmp_path, content):
    from carv_adapt.inspect import load_inspectable

    path = tmp_path / "thing.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as e:
        load_inspectable(path)
    assert str(path) in str(e.value)
    assert "refit log" in str(e.value) and "policy" in str(e.value) and "schema_version" in str(e.value)


def test_inspect_missing_file_is_a_config_error(tmp_path):
    from carv_adapt.inspect import load_inspectable

    with pytest.raises(ConfigError, match="no such file"):
        load_inspectable(tmp_path / "nope.json")


def test_inspect_log_with_a_broken_later_line_names_the_line(log_path, tmp_path):
    from carv_adapt.inspect import load_inspectable

    broken = tmp_path / "broken.jsonl"
    text = log_path.read_text()
    broken.write_text(text + '{"step": 1\n')
    n = len(text.splitlines()) + 1
    with pytest.raises(ConfigError, match=f"{broken}:{n}:"):
        load_inspectable(broken)


def test_inspect_shows_the_control_variate_per_bin(tmp_path):
    """docs/theory.md §14: the refit log records the coefficients, and inspect prints them per bin with the
    correlation and the variance removed."""
    import torch

    from carv_adapt import AdaptiveController
    from carv_adapt.fit.logs import JsonlRefitLog, read_refit_log
    from carv_adapt.inspect import report_lines
    from carv_adapt.teachers import GaussianSurrogate, GaussianTeacher, sds_integrand

    teacher = GaussianTeacher(torch.tensor([0.5, -1.0]), std=0.7)
    cv = GaussianSurrogate(teacher.alphas_cumprod, torch.tensor([[0.4, -0.8]]), torch.tensor([[0.6, 0.9]]))
    path = tmp_path / "refits.jsonl"
    ctrl = AdaptiveController(num_bins=4, batch_size=2, warmup_steps=4, refit_every=4, logger=JsonlRefitLog(path))
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        plan = ctrl.plan()
        x = torch.randn(plan.N, 2, generator=g, dtype=torch.float64)
        eps = plan.noise((2,), dtype=torch.float64)
        ctrl.observe(plan, sds_integrand(teacher, x, plan.t, eps), control=cv.evaluate(x, plan.t, eps),
                     costs={"upstream": 0.01, "teacher": 0.001 * plan.K})  # fmt: skip
        ctrl.step()
    (rec,) = read_refit_log(path)[-1:]
    assert rec.extra["cv_beta"] == ctrl.history[-1].extra["cv_beta"] and len(rec.extra["cv_beta"]) == 4
    lines = report_lines(None, [rec])
    at = next(i for i, line in enumerate(lines) if line.startswith("control variate"))
    assert len(lines) == at + 2 + 4 and "beta" in lines[at + 1]
