"""Untrained checkpoints shaped for the simulated robot `flowstep_obstacle_sim`, for plumbing tests and timing.

A policy made by `lerobot-train` from a `lerobot-record` run of the robot (README, "A simulated RGB-D robot") sees
the robot's state and its depth map turned into a point cloud with the camera's calibration. These checkpoints
have the same inputs, processors and architecture, with initial weights: serving, the robot's control loop and
inference time do not depend on the weights, and writing one takes a second instead of a recording and a
training run. Their actions are of no use for success.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors
from lerobot.utils.constants import ACTION, OBS_STR
from lerobot.utils.feature_utils import dataset_to_policy_features, hw_to_dataset_features

from lerobot_flowstep.envs.obstacle import ObstacleLayout
from lerobot_flowstep.processor.depth_maps import EXTRINSICS_INFO, INTRINSICS_INFO
from lerobot_flowstep.processor.pointcloud import PointCloudConfig
from lerobot_flowstep.robots.obstacle_sim import FlowstepObstacleSim, FlowstepObstacleSimConfig

# The point-cloud settings of README's sim-robot training commands.
POINTCLOUD_BOUNDS = ([-1.2, -1.2, -0.05], [1.2, 1.2, 0.5])


def sim_robot_dataset_features(robot_config: FlowstepObstacleSimConfig) -> dict[str, dict[str, Any]]:
    """The features `lerobot-record` writes for this robot, with the camera calibration `lerobot-flowstep
    calibrate` adds to the depth map's info."""
    robot = FlowstepObstacleSim(robot_config)
    features = hw_to_dataset_features(robot.observation_features, OBS_STR)
    features |= hw_to_dataset_features(robot.action_features, ACTION)
    calibration = robot.camera_calibration[robot_config.camera]
    info = features[f"{OBS_STR}.images.{robot_config.camera}_depth"]["info"]
    info[INTRINSICS_INFO] = calibration["intrinsics"]
    info[EXTRINSICS_INFO] = calibration["camera_to_world"]
    return features


def _workspace_stats(features: dict[str, dict[str, Any]], num_modes: int) -> dict[str, dict[str, torch.Tensor]]:
    half = float(ObstacleLayout.preset(num_modes).workspace_half_extent)
    stats = {}
    for key in (f"{OBS_STR}.state", ACTION):
        dim = features[key]["shape"][0]
        stats[key] = {"min": torch.full((dim,), -half), "max": torch.full((dim,), half)}
    return stats


def write_sim_robot_checkpoint(
    policy_type: str,
    output_dir: Path,
    robot_config: FlowstepObstacleSimConfig,
    teacher_path: Path | None = None,
    num_points: int = 256,
    seed: int = 0,
    **config_fields: Any,
) -> Path:
    """Save an untrained `policy_type` checkpoint (policy and processors, as `lerobot-train` saves them) whose
    inputs are the robot's state and its depth map as a point cloud. An `imle_student` takes its architecture from
    `teacher_path`; other `config_fields` (e.g. `horizon=8`) are set on the config."""
    features = sim_robot_dataset_features(robot_config)
    policy_features = dataset_to_policy_features(features)
    depth = f"{OBS_STR}.images.{robot_config.camera}_depth"
    fields: dict[str, Any] = {"output_features": {ACTION: policy_features[ACTION]}}
    if policy_type == "imle_student":
        if teacher_path is None:
            raise ValueError("An imle_student checkpoint needs teacher_path: it takes the teacher's architecture.")
        fields["teacher_path"] = str(teacher_path)
    else:
        low, high = POINTCLOUD_BOUNDS
        fields["input_features"] = {
            f"{OBS_STR}.state": policy_features[f"{OBS_STR}.state"],
            depth: PolicyFeature(FeatureType.VISUAL, policy_features[depth].shape),
        }
        fields["pointcloud"] = PointCloudConfig(
            cameras=[robot_config.camera], num_points=num_points, bounds_low=list(low), bounds_high=list(high)
        )
    config = make_policy_config(policy_type, device="cpu", **(fields | config_fields))
    config.set_dataset_feature_metadata(features)
    torch.manual_seed(seed)
    policy = get_policy_class(policy_type)(config)
    preprocessor, postprocessor = make_pre_post_processors(
        config, dataset_stats=_workspace_stats(features, robot_config.num_modes)
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    for part in (policy, preprocessor, postprocessor):
        part.save_pretrained(output_dir)
    return output_dir
