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


def test_a_student_distils_the_teacher_checkpoint_it_is_given(tmp_path, monkeypatch):
    """metaworld_distil.py distils a teacher checkpoint kept part-way through its training: the student's config
    names that checkpoint, not the run's last one."""
    benchmark = _benchmark()
    task_dir = tmp_path / "button-press-v3"
    last = task_dir / "teacher_pc" / "train" / "checkpoints" / "last" / "pretrained_model"
    kept = benchmark.intermediate_checkpoint(task_dir / "teacher_pc", 6000)
    for folder in (last, kept):
        folder.mkdir(parents=True)
    monkeypatch.setattr(benchmark, "teacher_cache", lambda teacher, dataset, path, args: path)
    args = argparse.Namespace(
        steps=1500, batch_size=32, image_size=64, device="cpu", num_workers=0, vision_backbone="conv", network="mlp"
    )

    def teacher_of(run_dir: Path, **kwargs) -> str:
        config = benchmark.run_config("student_pc", "button-press-v3", task_dir / "data", run_dir, args, **kwargs)
        return json.loads(config.read_text())["policy"]["teacher_path"]

    assert teacher_of(task_dir / "student_pc") == str(last)
    assert teacher_of(task_dir / "from_teacher_step6000" / "student_pc", teacher=kept) == str(kept)
