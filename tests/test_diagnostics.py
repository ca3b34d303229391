"""`held_out_chamfer` (the `diagnose` command's library function) on real checkpoints and a dataset."""

import pytest

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
from lerobot_flowstep.policies.flowstep_regression import FlowstepRegressionConfig
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.tools.diagnostics import held_out_chamfer, mode_statistics
from lerobot_flowstep.tools.training import train_policy_on_dataset

REPO_ID = "local/flowstep_obstacle_diag"


def test_deterministic_policy_has_fidelity_below_coverage(tmp_path):
    root = generate_obstacle_dataset(tmp_path / "data", repo_id=REPO_ID, num_episodes=4, seed=0)
    small = {"device": "cpu", "horizon": 8, "n_action_steps": 4, "network": NetworkConfig(hidden_dim=32, num_blocks=1)}
    _, teacher, _ = train_policy_on_dataset(FlowstepTeacherConfig(**small), REPO_ID, root, tmp_path / "t", 3, 8)
    _, regression, _ = train_policy_on_dataset(FlowstepRegressionConfig(**small), REPO_ID, root, tmp_path / "r", 3, 8)
    result = held_out_chamfer(str(regression), str(teacher), REPO_ID, str(root), [3], num_frames=8, num_samples=6)
    assert result["frames"] == 8 and result["samples_per_frame"] == 6
    # Six identical samples: each is compared with its nearest teacher sample (fidelity), while every teacher
    # sample must be reached from that one point (coverage), which can only cost more.
    assert 0 < result["fidelity"] <= result["coverage"]
    assert result["spread_ratio"] == 0.0  # a deterministic policy: no spread at all


def test_mode_statistics_counts_modes_entropy_and_off_manifold():
    import numpy as np

    stats = mode_statistics(np.array([0, 1, 1, -1]), np.array([1, 1, 0, 0]), num_modes=2)
    assert stats.modes_covered == 2 and stats.off_manifold == 0.25 and stats.success_rate == 0.5
    assert stats.mode_entropy == pytest.approx(-(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3)) / np.log(2))
    assert stats.mode_histogram == [0.25, 0.5]
