"""JsonlRefitLog: a log that will not silently append to an earlier run's file."""

import pytest

from carv_adapt.errors import CarvError, ConfigError
from carv_adapt.fit import JsonlRefitLog, read_refit_log


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


def test_a_missing_log_is_one_config_error(tmp_path, capsys):
    from carv_adapt.cli import main

    with pytest.raises(ConfigError, match="cannot read the refit log"):
        read_refit_log(tmp_path / "missing.jsonl")
    assert main(["fit", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "p.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
