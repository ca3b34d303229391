"""Benchmark result files are replaced whole, whatever their name's length, and never left half-written."""

import json
from pathlib import Path

import pytest

from lerobot_flowstep.tools.timings import record_timing, write_text_atomic


def test_a_file_named_near_the_file_system_limit_is_written(tmp_path):
    # A recipe variant's latency file: 250 bytes of name, which a temporary name repeating it would push past 255.
    path = tmp_path / ("x" * 245 + ".json")
    write_text_atomic(path, "{}")
    assert path.read_text() == "{}"
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_replace_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    write_text_atomic(path, "old")

    def failing_replace(self, target):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_a_resumed_benchmark_adds_its_stage_to_the_earlier_timings(tmp_path):
    record_timing(tmp_path, "teacher_train_s", 12.34)
    record_timing(tmp_path, "teacher_cache_s", 5.0)
    record_timing(tmp_path, "teacher_train_s", 20.06)  # the stage run again replaces its own entry only
    assert json.loads((tmp_path / "timings.json").read_text()) == {"teacher_train_s": 20.1, "teacher_cache_s": 5.0}
