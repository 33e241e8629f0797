"""The command line's behaviour: one-line library errors, ``--version``, validated choices, documented arguments,
``fit`` reading T from the log, and ``fit`` writing a loadable policy."""

import argparse
import json
import types

import pytest

import carv_adapt
from carv_adapt.cli import build_parser, main
from carv_adapt.errors import ConfigError
from carv_adapt.fit import read_refit_log
from carv_adapt.fit.closed_form import fit_from_record
from carv_adapt.policy import Policy


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


# 1. library errors -------------------------------------------------------------------------------------------


def test_library_error_prints_one_line_and_returns_2(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    assert main(["inspect", str(bad), "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("carv-adapt: error: ")
    assert str(bad) in lines[0] and "Traceback" not in captured.err


def test_any_carv_error_subclass_is_caught(monkeypatch, capsys):
    import carv_adapt.schedule

    def boom(*a, **k):
        raise carv_adapt.StateError("out of order; call plan() first")

    monkeypatch.setattr(carv_adapt.schedule, "refit_steps", boom)
    assert main(["schedule"]) == 2
    assert capsys.readouterr().err == "carv-adapt: error: out of order; call plan() first\n"


def test_other_exceptions_propagate(monkeypatch):
    import carv_adapt.inspect

    def boom(path):
        raise RuntimeError("not a library error")

    monkeypatch.setattr(carv_adapt.inspect, "load_inspectable", boom)
    with pytest.raises(RuntimeError, match="not a library error"):
        main(["inspect", "whatever.json"])


# 2. --version ------------------------------------------------------------------------------------------------


def _version_output(capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    return capsys.readouterr().out.strip()


def test_version_from_installed_metadata(monkeypatch, capsys):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.8.7" if name == "carv_adapt" else "0")
    assert _version_output(capsys) == "carv-adapt 9.8.7"


def test_version_falls_back_to_dunder_version_then_unknown(monkeypatch, capsys):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    monkeypatch.setattr(carv_adapt, "__version__", "1.2.3", raising=False)
    assert _version_output(capsys) == "carv-adapt 1.2.3"
    monkeypatch.delattr(carv_adapt, "__version__")
    assert _version_output(capsys) == "carv-adapt unknown"


# 3. bench --workloads choices --------------------------------------------------------------------------------


def test_bench_workload_typo_is_a_usage_error_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--workloads", "sds3d", "sds", "--quick"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'sds'" in err
    for name in ("sds3d", "distill", "attribution"):
        assert f"'{name}'" in err


def test_bench_workloads_accepts_valid_choices_and_defaults_to_all():
    from carv_adapt.adapters import WORKLOADS

    parser = build_parser()
    assert parser.parse_args(["bench", "--workloads", "distill", "attribution"]).workloads == ["distill", "attribution"]
    assert tuple(parser.parse_args(["bench"]).workloads) == tuple(WORKLOADS)


# 4. help strings and fit's T ---------------------------------------------------------------------------------


def test_every_argument_of_every_subcommand_has_help():
    parser = build_parser()
    subs = _subparsers(parser)
    assert set(subs) == {"schedule", "demo", "inspect", "fit", "bench"}
    missing = [
        f"{name} {a.dest}"
        for name, sp in subs.items()
        for a in sp._actions
        if not a.help or a.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_fit_help_documents_every_argument(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    fit = _subparsers(build_parser())["fit"]
    for a in fit._actions:
        names = a.option_strings or [a.dest]
        assert all(n in text for n in names), names
        assert " ".join(a.help.split()) in text, a.dest
    assert "read from the log; needed only for logs that lack it" in text
    assert fit.parse_args(["x.jsonl", "-o", "p.json"]).num_timesteps is None


def _capture_T(monkeypatch, record):
    """Stub the log reader and stop at the first fitting call, recording the T it was given."""
    import carv_adapt.fit.closed_form
    import carv_adapt.fit.logs

    seen = {}

    def stop(record, num_timesteps, **kw):
        seen["T"] = num_timesteps
        raise ConfigError("stopped after resolving T")

    monkeypatch.setattr(carv_adapt.fit.logs, "read_refit_log", lambda path: [record])
    monkeypatch.setattr(carv_adapt.fit.closed_form, "policy_from_record", stop)
    return seen


def test_fit_reads_num_timesteps_from_the_log(monkeypatch, tmp_path, capsys):
    seen = _capture_T(monkeypatch, types.SimpleNamespace(step=30, num_timesteps=321))
    assert main(["fit", "log.jsonl", "-o", str(tmp_path / "p.json")]) == 2
    assert seen["T"] == 321
    assert "stopped after resolving T" in capsys.readouterr().err


def test_fit_flag_overrides_the_log(monkeypatch, tmp_path):
    seen = _capture_T(monkeypatch, types.SimpleNamespace(step=30, num_timesteps=321))
    assert main(["fit", "log.jsonl", "-o", str(tmp_path / "p.json"), "--num-timesteps", "200"]) == 2
    assert seen["T"] == 200


def test_fit_on_a_log_without_T_and_no_flag_names_the_fix(log_path, tmp_path, capsys):
    stripped = tmp_path / "old.jsonl"
    lines = []
    for line in log_path.read_text().splitlines():
        raw = json.loads(line)
        raw.pop("num_timesteps", None)  # an older log, written before records carried T
        lines.append(json.dumps(raw))
    stripped.write_text("\n".join(lines) + "\n")
    out = tmp_path / "p.json"
    assert main(["fit", str(stripped), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carv-adapt: error: ") and len(err.splitlines()) == 1
    assert str(stripped) in err and "pass --num-timesteps" in err
    assert not out.exists()


# 5. fit end to end -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_writes_a_loadable_policy_and_preview(log_path, tmp_path, capsys):
    pytest.importorskip("botorch")
    out = tmp_path / "policy.json"
    assert (
        main(["fit", str(log_path), "-o", str(out), "--num-timesteps", "200", "--trials", "6", "--replay-steps", "60"])
        == 0
    )
    pol = Policy.load(out)
    # The schema alone keeps K in [1, k_max]; what fit promises is the closed-form decision for the log's last
    # record under the settings it tuned, so recompute that decision from the written policy.
    closed = fit_from_record(read_refit_log(log_path)[-1], pol)
    assert pol.proposal.kind == "binned" and pol.allocation.K == closed.state.K
    assert pol.proposal.probs == pytest.approx(closed.state.probs.tolist(), abs=1e-12)
    assert "trials" in capsys.readouterr().out
    assert main(["inspect", str(out), "--out", str(tmp_path / "p"), "--preview", "4000"]) == 0
    assert (tmp_path / "p" / "proposal.png").stat().st_size > 2000


@pytest.mark.slow
def test_fit_replays_the_latest_record_with_positive_variances(log_path, tmp_path, capsys):
    """A log whose last between estimate reads <= 0 (within its noise of 0) is still fitted: the replay takes the
    latest record with both variances positive and says so; the policy is the last record's decision."""
    pytest.importorskip("botorch")
    lines = log_path.read_text().splitlines()
    last = json.loads(lines[-1])
    last["sigma_b2"] = -1e-4
    edited = tmp_path / "negative.jsonl"
    edited.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    out = tmp_path / "policy.json"
    assert main(["fit", str(edited), "-o", str(out), "--trials", "2", "--replay-steps", "40"]) == 0
    previous = json.loads(lines[-2])["step"]
    assert f"replaying the statistics of step {previous}" in capsys.readouterr().out
    assert Policy.load(out).provenance["fitted_from_step"] == last["step"]
