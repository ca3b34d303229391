"""MetaWorld's scripted experts written as a LeRobotDataset v3: `lerobot-flowstep generate-metaworld`.

One seed per episode (`reset(seed=...)` fixes the scene), only successful episodes kept, as DP3 does; the
writer is atomic (nothing appears at `--output` until the dataset is complete). Columns per frame, as the
`flowstep_metaworld` env emits them under LeRobot's keys: `observation.images.<cam>` (PNG),
`observation.depth.<cam>` (1, H, W) float32 metres, `observation.camera.<cam>.intrinsics` / `.extrinsics`,
`observation.state` (13,) and `action` (4,); with a point-cloud config also `observation.pointcloud`, fused by
the processor step's own function, so a policy trained on it skips the fusion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lerobot.utils.constants import ACTION, OBS_STATE
from tqdm import tqdm

from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.datasets.atomic import atomic_lerobot_dataset
from lerobot_flowstep.datasets.features import camera_features, pointcloud_feature
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
    cameras: list[str], image_size: int, pointcloud: PointCloudConfig | None
) -> dict[str, dict[str, Any]]:
    features: dict[str, dict[str, Any]] = {
        OBS_STATE: {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": list(STATE_NAMES)},
        ACTION: {"dtype": "float32", "shape": (ACTION_DIM,), "names": list(ACTION_NAMES)},
    }
    for cam in cameras:
        features.update(camera_features(cam, image_size, image_size))
    if pointcloud is not None:
        features.update(pointcloud_feature(pointcloud))
    return features


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
    observations: list[dict], actions: list[np.ndarray], cameras: list[str], pointcloud: PointCloudConfig | None
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
        for cam in cameras:
            frame[rgb_key(cam)] = obs["pixels"][cam]
            frame[depth_key(cam)] = obs[f"depth.{cam}"]
            frame[intrinsics_key(cam)] = obs[f"camera.{cam}.intrinsics"]
            frame[extrinsics_key(cam)] = obs[f"camera.{cam}.extrinsics"]
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
) -> Path:
    """Write `num_episodes` successful expert episodes of `task` to `root`; episode seeds are `seed`, `seed`+1,
    ... (skipping those the expert fails). Raises RuntimeError when the expert fails `MAX_ATTEMPTS_PER_EPISODE`
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
    env = MetaworldRGBDEnv(info.name, cameras=cameras, image_size=image_size)
    try:
        with atomic_lerobot_dataset(
            Path(root),
            overwrite=overwrite,
            repo_id=repo_id,
            fps=80,
            features=metaworld_dataset_features(cameras, image_size, pointcloud),
            robot_type="flowstep_metaworld",
            use_videos=False,
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
                for frame in _frames(observations, actions, cameras, pointcloud):
                    dataset.add_frame({**frame, "task": info.description})
                dataset.save_episode()
                bar.update(1)
            bar.close()
    finally:
        env.close()
    return Path(root)
