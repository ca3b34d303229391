"""What a policy needs from a robot's observation, checked against what the robot gives, before serving it.

The robot client sends, with its policy instructions, the robot's observation as LeRobot dataset features
(`hw_to_dataset_features(robot.observation_features, "observation")`: `observation.state` (n,) and
`observation.images.<cam>` (H, W, C), a depth camera's `<cam>_depth` with C = 1). A flowstep policy's
`input_features` are what its encoder sees after the preprocessor: a LeRobot depth map has become
`observation.depth.<cam>` (`config.depth_maps` names the map it comes from) and the point cloud is made by the
point-cloud step. This module maps the one onto the other, so that a robot that lacks an input, or gives it at
another size, is refused at once with the keys named, not at the first observation deep in the encoder.
Images are not resized: a depth map resized is no longer the camera its calibration describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lerobot.configs import FeatureType

from lerobot_flowstep.policies.common.config_base import FlowstepBaseConfig
from lerobot_flowstep.processor.observation_check import required_observation


def required_robot_features(config: FlowstepBaseConfig) -> dict[str, tuple[int, ...]]:
    """{LeRobot observation key: its shape as the robot gives it} for every input the preprocessor does not make
    (the keys the preprocessor's `flowstep_observation_check` step checks): images and depth maps channel-last
    (H, W, C), vectors as they are."""
    features, _ = required_observation(config.input_features, config.depth_maps, config.pointcloud.enabled)
    required = {}
    for key, shape in features.items():
        feature = config.input_features.get(key)
        image = key in config.depth_maps or (feature is not None and feature.type == FeatureType.VISUAL)
        required[key] = (shape[1], shape[2], shape[0]) if image and len(shape) == 3 else tuple(shape)
    return required


def robot_feature_problems(
    config: FlowstepBaseConfig,
    robot_features: Mapping[str, Mapping[str, Any]],
    rename_map: Mapping[str, str] | None = None,
) -> list[str]:
    """Each input of the policy that the robot's observation (`robot_features`, LeRobot dataset features, renamed
    by `rename_map` as the preprocessor renames them) lacks or gives at another shape; empty when it can run."""
    rename_map = rename_map or {}
    given = {rename_map.get(key, key): tuple(feature["shape"]) for key, feature in robot_features.items()}
    problems = []
    for key, shape in required_robot_features(config).items():
        if key not in given:
            problems.append(f"'{key}' {shape} is missing")
        elif given[key] != shape:
            problems.append(f"'{key}' is {given[key]} from the robot, the policy was trained on {shape}")
    return problems
