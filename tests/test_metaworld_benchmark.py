"""benchmarks/metaworld_benchmark.py: what it reuses from an earlier run."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "metaworld_benchmark.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("metaworld_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_checkpoint_trained_at_another_budget_is_not_reused(tmp_path):
    benchmark = _benchmark()
    run_dir = tmp_path / "button-press-v3" / "teacher_pc"
    (run_dir / "train" / "checkpoints" / "last" / "pretrained_model").mkdir(parents=True)
    (run_dir / "train_config_input.json").write_text(json.dumps({"steps": 6000, "batch_size": 32}))
    args = argparse.Namespace(steps=24000, batch_size=32)
    with pytest.raises(SystemExit, match=r"trained with \{'steps': 6000, 'batch_size': 32\}.*own --output"):
        benchmark.train("teacher_pc", "button-press-v3", tmp_path / "data", run_dir.parent, args)
    # The same budget is the same run: its checkpoint is reused.
    args.steps = 6000
    checkpoint = benchmark.train("teacher_pc", "button-press-v3", tmp_path / "data", run_dir.parent, args)
    assert checkpoint == run_dir / "train" / "checkpoints" / "last" / "pretrained_model"
