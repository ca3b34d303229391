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


def test_error_by_distance_bins_frames_by_their_nearest_training_frame():
    import torch

    from lerobot_flowstep.tools.diagnostics import nearest_distances, paired_error_by_distance

    g = torch.Generator().manual_seed(0)
    references, queries = torch.randn(300, 5, generator=g), torch.randn(40, 5, generator=g)
    brute = torch.tensor([min((q - r).norm().item() for r in references) for q in queries])
    distances = nearest_distances(queries, references, chunk=7)  # chunks that do not divide the queries
    assert torch.allclose(distances, brute, atol=1e-5)
    # An error that grows with distance rises bin by bin; the bins hold equal counts, nearest first.
    result = paired_error_by_distance(distances**2, distances, num_bins=4)
    ordered = distances.sort().values
    assert result["edges"] == pytest.approx([0.0, *ordered[[9, 19, 29, 39]].tolist()])
    assert result["errors"] == pytest.approx([(ordered[i : i + 10] ** 2).mean().item() for i in (0, 10, 20, 30)])
    assert result["errors"] == sorted(result["errors"])
    with pytest.raises(ValueError, match="one distance per error"):
        paired_error_by_distance(distances[:3], distances[:3])
    with pytest.raises(ValueError, match=r"Cannot compare queries \(40, 5\) with references \(300, 4\)"):
        nearest_distances(queries, references[:, :4])
