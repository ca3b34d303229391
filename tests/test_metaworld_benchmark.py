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


def test_curve_now_evaluates_the_checkpoints_saved_so_far_and_trains_nothing(tmp_path, monkeypatch, capsys):
    """While a long teacher trains, `--curve-now` evaluates its curve checkpoints in another process, into the
    folders the training run reads when it ends."""
    benchmark = _benchmark()
    task_dir = tmp_path / "drawer-open-v3"
    benchmark.intermediate_checkpoint(task_dir / "teacher_pc", 3000).mkdir(parents=True)
    benchmark.intermediate_checkpoint(task_dir / "teacher_pc", 6000).mkdir(parents=True)
    evaluated = []

    def evaluate(row, checkpoint, overrides, task, task_dir_, args, seeds=None):
        evaluated.append((row, checkpoint, task_dir_, seeds))
        return [True, True, False, True] if "3000" in row else [True, False, False, False]

    def train(*args, **kwargs):
        raise AssertionError("--curve-now must not train")

    monkeypatch.setattr(benchmark, "evaluate", evaluate)
    monkeypatch.setattr(benchmark, "train", train)
    argv = ["--tasks", "drawer-open-v3", "--output", str(tmp_path), "--steps", "24000", "--trainer", "memory",
            "--curve-every", "3000", "--rows", "teacher (pc + state)", "--curve-now"]  # fmt: skip
    monkeypatch.setattr("sys.argv", ["metaworld_benchmark.py", *argv])
    benchmark.main()
    assert [(row, seeds) for row, _, _, seeds in evaluated] == [
        ("teacher (pc + state) at step 3000", 1),
        ("teacher (pc + state) at step 6000", 1),
    ]
    assert all(folder == task_dir for _, _, folder, _ in evaluated)
    assert "3000: 75%, 6000: 25%" in capsys.readouterr().out
    assert not (tmp_path / "results.json").exists()
