"""The demo end to end at a toy budget: every stage runs and the report holds what the README promises."""

import json

import pytest

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.tools.demo import DemoSettings, run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_report_and_picture(tmp_path):
    settings = DemoSettings(
        output_dir=tmp_path,
        num_episodes=6,
        network=NetworkConfig(hidden_dim=32, num_blocks=1),
        teacher_steps=20,
        cache_samples=3,
        cache_steps=2,
        student_steps=5,
        regression_steps=5,
        eval_episodes=4,
        latency_repeats=3,
    )
    report = run_demo(settings)
    assert set(report["results"]) == {
        "teacher (10 steps)", "1-step CFM", "IMLE student (1 sample)", "IMLE student", "IMLE student (density rule)",
        "regression", "random",
    }  # fmt: skip
    student = report["results"]["IMLE student"]
    assert {"success_rate", "modes_covered", "mode_entropy", "off_manifold", "latency"} <= set(student)
    assert student["bare_forward_latency"]["median_ms"] > 0
    assert (tmp_path / "trajectories.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "report.json").read_text())["results"] == report["results"]
    assert (tmp_path / "teacher" / "teacher_samples.safetensors").is_file()
