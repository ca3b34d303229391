"""Datasets recorded the way `lerobot-record` records a robot with an RGB-D camera: LeRobot's own
`hw_to_dataset_features`, `LeRobotDataset.create`, `add_frame` and `save_episode`, with the depth camera
`top_depth` as uint16 millimetres (a RealSense's format) or float32 metres. The scene is the embedded
ObstacleReach task's camera (RGB, metric depth, fixed pinhole intrinsics and extrinsics), driven by its expert."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.utils.constants import ACTION, OBS_STR
from lerobot.utils.feature_utils import hw_to_dataset_features

from lerobot_flowstep.datasets.obstacle_dataset import expert_episodes
from lerobot_flowstep.envs.obstacle import CAMERA_NAME, TASK_DESCRIPTION

REPO_ID = "local/recorded_rgbd"
DEPTH_CAMERA = f"{CAMERA_NAME}_depth"


def record_rgbd_dataset(
    root: Path,
    num_episodes: int = 2,
    image_size: int = 64,
    depth_unit: str = "mm",
    use_video: bool = True,
    seed: int = 0,
) -> tuple[Path, np.ndarray, np.ndarray]:
    """Record `num_episodes` expert episodes; returns the root and the camera's (intrinsics, camera-to-world),
    which LeRobot does not record."""
    hw_observation = {
        "x": float,
        "y": float,
        CAMERA_NAME: (image_size, image_size, 3),
        DEPTH_CAMERA: (image_size, image_size, 1),
    }
    features = {
        **hw_to_dataset_features(hw_observation, OBS_STR, use_video=use_video),
        **hw_to_dataset_features({"x": float, "y": float}, ACTION, use_video=use_video),
    }
    dataset = LeRobotDataset.create(REPO_ID, fps=10, features=features, root=root, use_videos=use_video)
    intrinsics = extrinsics = None
    for episode in expert_episodes(num_episodes, camera=True, image_size=image_size, seed=seed):
        for observation, action in zip(episode.observations[:-1], episode.actions, strict=True):
            metres = observation[f"depth.{CAMERA_NAME}"][0]
            depth = np.rint(metres * 1000).astype(np.uint16) if depth_unit == "mm" else metres.astype(np.float32)
            dataset.add_frame(
                {
                    f"{OBS_STR}.state": np.asarray(observation["agent_pos"], dtype=np.float32),
                    f"{OBS_STR}.images.{CAMERA_NAME}": observation["pixels"][CAMERA_NAME],
                    f"{OBS_STR}.images.{DEPTH_CAMERA}": depth[..., None],
                    ACTION: np.asarray(action, dtype=np.float32),
                    "task": TASK_DESCRIPTION,
                }
            )
            intrinsics = observation[f"camera.{CAMERA_NAME}.intrinsics"]
            extrinsics = observation[f"camera.{CAMERA_NAME}.extrinsics"]
        dataset.save_episode()
    dataset.finalize()
    return Path(root), np.asarray(intrinsics, dtype=np.float64), np.asarray(extrinsics, dtype=np.float64)
