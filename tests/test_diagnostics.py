"""`held_out_chamfer` (the `diagnose` command's library function) on real checkpoints and a dataset."""

import pytest

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
from lerobot_flowstep.policies.flowstep_regression import FlowstepRegressionConfig
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.tools.diagnostics import energy_distance, held_out_chamfer, mode_statistics
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


def test_energy_distance_matches_a_loop_and_is_not_fooled_by_collapse():
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 12, 4, 3, generator=g), torch.randn(2, 9, 4, 3, generator=g) + 0.5
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 3] = False

    def norm(x, y, m):  # root of the mean over real steps of the squared per-step distance
        return (((x - y) ** 2).sum(-1)[m].mean()).sqrt()

    for i in range(2):
        m = mask[i]
        cross = torch.stack([norm(x, y, m) for x in a[i] for y in b[i]]).mean()
        within_a = torch.stack([norm(x, y, m) for j, x in enumerate(a[i]) for k, y in enumerate(a[i]) if j != k]).mean()
        within_b = torch.stack([norm(x, y, m) for j, x in enumerate(b[i]) for k, y in enumerate(b[i]) if j != k]).mean()
        distance, spread_a, spread_b = energy_distance(a, b, mask)
        torch.testing.assert_close(distance[i], 2 * cross - within_a - within_b)
        torch.testing.assert_close(spread_a[i], within_a)
        torch.testing.assert_close(spread_b[i], within_b)

    # In many dimensions Chamfer prefers a collapsed set (every sample at the mean) to a faithful second draw;
    # the energy distance does not.
    from lerobot_flowstep.core.imle import chamfer_terms

    reference, copy = torch.randn(2, 1, 32, 16, 2, generator=g)
    collapsed = torch.zeros_like(copy)
    chamfer_copy = sum(t.mean() for t in chamfer_terms(reference, copy))
    chamfer_collapsed = sum(t.mean() for t in chamfer_terms(reference, collapsed))
    assert chamfer_collapsed < chamfer_copy
    collapsed[0, 0, 0] += 1e-3  # distinct samples, so the within-set term is defined
    assert energy_distance(reference, collapsed)[0].mean() > 5 * energy_distance(reference, copy)[0].abs().mean()


def test_mode_statistics_counts_modes_entropy_and_off_manifold():
    import numpy as np

    stats = mode_statistics(np.array([0, 1, 1, -1]), np.array([1, 1, 0, 0]), num_modes=2)
    assert stats.modes_covered == 2 and stats.off_manifold == 0.25 and stats.success_rate == 0.5
    assert stats.mode_entropy == pytest.approx(-(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3)) / np.log(2))
    assert stats.mode_histogram == [0.25, 0.5]
