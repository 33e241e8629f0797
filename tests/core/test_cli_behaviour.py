"""The command line's behaviour: one-line library errors, ``--version``, validated choices, documented arguments,
``fit`` reading T from the log, ``inspect`` telling logs from policies by content, and a log that will not
silently append to an earlier run's file."""

import argparse
import json
import shutil
import types
from pathlib import Path

import pytest
import torch

import carv_adapt
from carv_adapt import AdaptiveController
from carv_adapt.cli import build_parser, main
from carv_adapt.errors import CarvError, ConfigError
from carv_adapt.fit import JsonlRefitLog, read_refit_log
from carv_adapt.workloads import SyntheticNested

POLICY = Path(__file__).resolve().parents[2] / "policies" / "sds3d.json"


@pytest.fixture(scope="module")
def log_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "refits.jsonl"
    c = AdaptiveController(
        num_timesteps=200,
        num_bins=10,
        batch_size=8,
        warmup_steps=10,
        refit_every=10,
        logger=JsonlRefitLog(path),
        seed=0,
    )
    wl = SyntheticNested(c.target, c.edges, 0.3 + 3 * torch.linspace(0, 1, 10, dtype=torch.float64) ** 2)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        p = c.plan()
        c.observe(p, wl.contributions(p, g), costs=wl.costs(p))
        c.step()
    return path


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


# 5. inspect by content ---------------------------------------------------------------------------------------


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


# 6. JsonlRefitLog does not append by accident ----------------------------------------------------------------


def _one_record(log_path):
    return read_refit_log(log_path)[0]


def test_refit_log_refuses_an_existing_non_empty_file(log_path, tmp_path):
    path = tmp_path / "run.jsonl"
    JsonlRefitLog(path)(_one_record(log_path))
    with pytest.raises(ConfigError) as e:
        JsonlRefitLog(path)
    assert str(path) in str(e.value) and "append=True" in str(e.value) and "new path" in str(e.value)
    assert isinstance(e.value, CarvError)
    assert len(read_refit_log(path)) == 1  # untouched


def test_refit_log_appends_when_asked(log_path, tmp_path):
    path = tmp_path / "run.jsonl"
    rec = _one_record(log_path)
    JsonlRefitLog(path)(rec)
    log = JsonlRefitLog(path, append=True)
    log(rec)
    log(rec)
    assert len(read_refit_log(path)) == 3


def test_refit_log_accepts_a_fresh_or_empty_path(log_path, tmp_path):
    fresh = tmp_path / "new" / "folder" / "run.jsonl"
    JsonlRefitLog(fresh)(_one_record(log_path))
    assert len(read_refit_log(fresh)) == 1
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    JsonlRefitLog(empty)(_one_record(log_path))
    assert len(read_refit_log(empty)) == 1
