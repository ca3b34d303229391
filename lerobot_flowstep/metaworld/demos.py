"""MetaWorld's scripted experts written as a LeRobotDataset v3: `lerobot-flowstep generate-metaworld`.

One seed per episode (`reset(seed=...)` fixes the scene), only successful episodes kept, as DP3 does; the
writer is atomic (nothing appears at `--output` until the dataset is complete). Columns per frame: each
camera as LeRobot records an RGB-D camera (`datasets.features`: `observation.images.<cam>` and the depth map
`observation.images.<cam>_depth`, a depth video by default, MetaWorld's cameras being fixed, with their
calibration in the depth map's info), `observation.state` (13,) and `action` (4,); with a point-cloud config
also `observation.pointcloud`, fused by the processor step's own function from the env's float depth, so a
policy trained on it skips the fusion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lerobot.utils.constants import ACTION, OBS_STATE
from tqdm import tqdm

from lerobot_flowstep.constants import OBS_POINTCLOUD
from lerobot_flowstep.datasets.atomic import atomic_lerobot_dataset, check_destination
from lerobot_flowstep.datasets.calibration import calibration_info
from lerobot_flowstep.datasets.features import camera_features, camera_frame, pointcloud_feature, uses_video
from lerobot_flowstep.metaworld.env import ACTION_DIM, DEFAULT_CAMERAS, STATE_NAMES, MetaworldRGBDEnv
from lerobot_flowstep.metaworld.tasks import metaworld_task
from lerobot_flowstep.processor.pointcloud import PointCloudConfig, fused_pointclouds

ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
# The workspace above the table (world frame, metres): objects, targets and the gripper, not the table top
# (z = 0), the floor or the room. The robot's base stands at the origin and reaches along +y.
WORKSPACE_LOW = (-0.6, 0.2, 0.005)
WORKSPACE_HIGH = (0.6, 1.0, 0.6)
# Failed expert episodes are re-drawn with the next seed; this many failures in a row means a broken setup.
MAX_ATTEMPTS_PER_EPISODE = 5


def metaworld_pointcloud_config(
    cameras: list[str] | tuple[str, ...] = DEFAULT_CAMERAS, num_points: int = 512, use_rgb: bool = False
) -> PointCloudConfig:
    """DP3's cloud: the workspace of `cameras` farthest-point sampled to 512 points."""
    bounds = {"bounds_low": list(WORKSPACE_LOW), "bounds_high": list(WORKSPACE_HIGH)}
    return PointCloudConfig(cameras=list(cameras), num_points=num_points, use_rgb=use_rgb, **bounds)


def metaworld_dataset_features(
    cameras: list[str],
    image_size: int,
    pointcloud: PointCloudConfig | None,
    calibrations: dict[str, dict[str, Any]],
    depth_storage: str = "video",
    rgb_storage: str = "auto",
) -> dict[str, dict[str, Any]]:
    """The feature spec `generate_metaworld_dataset` writes; `calibrations` (`camera_calibrations`) per camera."""
    features: dict[str, dict[str, Any]] = {
        OBS_STATE: {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": list(STATE_NAMES)},
        ACTION: {"dtype": "float32", "shape": (ACTION_DIM,), "names": list(ACTION_NAMES)},
    }
    for cam in cameras:
        features.update(camera_features(cam, image_size, image_size, calibrations[cam], depth_storage, rgb_storage))
    if pointcloud is not None:
        features.update(pointcloud_feature(pointcloud))
    return features


def camera_calibrations(observation: dict[str, Any], cameras: list[str]) -> dict[str, dict[str, Any]]:
    """The info entries of each (fixed) camera's calibration, from an observation of the env."""
    return {
        cam: calibration_info(
            cam, observation[f"camera.{cam}.intrinsics"], observation[f"camera.{cam}.extrinsics"], "MetaworldRGBDEnv"
        )
        for cam in cameras
    }


def expert_episode(env: MetaworldRGBDEnv, seed: int, max_steps: int) -> tuple[list[dict], list[np.ndarray], bool]:
    """The expert's observations and actions from `reset(seed)` until success or `max_steps` actions."""
    observation, _ = env.reset(seed=seed)
    observations, actions, success = [], [], False
    while len(actions) < max_steps and not success:
        action = env.expert_action()
        observations.append(observation)
        actions.append(action)
        observation, _, success, _, _ = env.step(action)
    return observations, actions, success


def _frames(
    observations: list[dict],
    actions: list[np.ndarray],
    calibrations: dict[str, dict[str, Any]],
    pointcloud: PointCloudConfig | None,
) -> list[dict[str, Any]]:
    clouds = None
    if pointcloud is not None:
        # The whole episode in one call: one batched fusion instead of one per frame.
        def stacked(key: str) -> list[np.ndarray]:
            return [np.stack([o[key.format(cam)] for o in observations]) for cam in pointcloud.cameras]

        clouds = fused_pointclouds(
            [d[:, 0] for d in stacked("depth.{}")],
            stacked("camera.{}.intrinsics"),
            stacked("camera.{}.extrinsics"),
            pointcloud,
            colors=[np.stack([o["pixels"][cam] for o in observations]) for cam in pointcloud.cameras]
            if pointcloud.use_rgb
            else None,
        )
    frames = []
    for t, (obs, action) in enumerate(zip(observations, actions, strict=True)):
        frame: dict[str, Any] = {OBS_STATE: obs["agent_pos"], ACTION: np.asarray(action, dtype=np.float32)}
        for cam, calibration in calibrations.items():
            frame |= camera_frame(
                cam,
                obs["pixels"][cam],
                obs[f"depth.{cam}"],
                obs[f"camera.{cam}.intrinsics"],
                obs[f"camera.{cam}.extrinsics"],
                calibration,
            )
        if clouds is not None:
            frame[OBS_POINTCLOUD] = clouds[t]
        frames.append(frame)
    return frames


def generate_metaworld_dataset(
    root: Path,
    task: str,
    repo_id: str | None = None,
    num_episodes: int = 10,
    cameras: list[str] | tuple[str, ...] = DEFAULT_CAMERAS,
    image_size: int = 128,
    max_steps: int = 200,
    pointcloud: PointCloudConfig | None = None,
    seed: int = 0,
    overwrite: bool = False,
    depth_storage: str = "video",
    rgb_storage: str = "auto",
) -> Path:
    """Write `num_episodes` successful expert episodes of `task` to `root`; episode seeds are `seed`, `seed`+1,
    ... (skipping those the expert fails). `depth_storage` / `rgb_storage`: see `datasets.features`.
    Raises RuntimeError when the expert fails `MAX_ATTEMPTS_PER_EPISODE`
    seeds in a row, ValueError for an unknown task or camera, FileExistsError when `root` exists."""
    info = metaworld_task(task)
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be at least 1, got {num_episodes}.")
    cameras = list(cameras)
    if pointcloud is not None:
        missing = [c for c in pointcloud.cameras if c not in cameras]
        if missing:
            raise ValueError(f"Point-cloud camera(s) {missing} are not recorded; recorded cameras: {cameras}.")
    repo_id = repo_id or f"local/metaworld_{info.name.removesuffix('-v3').replace('-', '_')}"
    check_destination(Path(root), overwrite)
    env = MetaworldRGBDEnv(info.name, cameras=cameras, image_size=image_size)
    try:
        # MetaWorld's cameras are fixed: their calibration goes into the feature spec (every frame is checked
        # against it when written).
        calibrations = camera_calibrations(env.reset(seed=seed)[0], cameras)
        features = metaworld_dataset_features(cameras, image_size, pointcloud, calibrations, depth_storage, rgb_storage)
        with atomic_lerobot_dataset(
            Path(root),
            overwrite=overwrite,
            repo_id=repo_id,
            fps=80,
            features=features,
            robot_type="flowstep_metaworld",
            use_videos=uses_video(features),
        ) as dataset:
            episode_seed, failures = seed, 0
            bar = tqdm(total=num_episodes, desc=f"{info.name} expert episodes", unit="episode")
            while bar.n < num_episodes:
                observations, actions, success = expert_episode(env, episode_seed, max_steps)
                episode_seed += 1
                if not success:
                    failures += 1
                    if failures >= MAX_ATTEMPTS_PER_EPISODE:
                        raise RuntimeError(
                            f"MetaWorld's expert failed {failures} seeds in a row on {info.name} (last seed "
                            f"{episode_seed - 1}, {max_steps} steps each); raise max_steps or check the install."
                        )
                    continue
                failures = 0
                for frame in _frames(observations, actions, calibrations, pointcloud):
                    dataset.add_frame({**frame, "task": info.description})
                dataset.save_episode()
                bar.update(1)
            bar.close()
    finally:
        env.close()
    return Path(root)
