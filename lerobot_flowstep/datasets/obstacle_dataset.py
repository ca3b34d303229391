"""Expert demonstrations of ObstacleReach written as a LeRobotDataset (v3, images stored losslessly).

Columns (frame t holds the observation the expert acted on and that action):
- `observation.state` (2,) float32, `observation.environment_state` (2 + 2K,) float32, `action` (2,)
  float32 (absolute target position);
- with `camera=True`: the fixed camera `top` as LeRobot records an RGB-D camera (`datasets.features`):
  `observation.images.top` (H, W, 3) and the depth map `observation.images.top_depth` (H, W, 1), a depth video
  by default, with the camera's intrinsics and camera-to-world extrinsics in the depth map's info;
- `expert_mode` int64: the mode the expert picked for the episode. It is not under `observation.` or
  `action`, so `dataset_to_policy_features` ignores it and policies never see it; evaluation code uses
  it to check mode coverage.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

# Re-exported: tests patch the writer class through this module.
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: F401
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_STATE
from tqdm import tqdm

from lerobot_flowstep.datasets.atomic import atomic_lerobot_dataset, check_destination
from lerobot_flowstep.datasets.calibration import calibration_info
from lerobot_flowstep.datasets.features import camera_features, camera_frame, uses_video
from lerobot_flowstep.envs.expert import ExpertEpisode, ScriptedExpert, run_expert_episode
from lerobot_flowstep.envs.obstacle import CAMERA_NAME, TASK_DESCRIPTION, ObstacleLayout, ObstacleReachEnv

FPS = 10
EXPERT_MODE = "expert_mode"
DEFAULT_REPO_ID = "local/flowstep_obstacle"


def obstacle_dataset_features(
    num_modes: int,
    camera: bool,
    image_size: int,
    calibration: dict[str, Any] | None = None,
    depth_storage: str = "video",
    rgb_storage: str = "auto",
) -> dict[str, dict[str, Any]]:
    """LeRobot feature spec of the dataset written by `generate_obstacle_dataset`; `calibration`
    (`calibration_info`) of the fixed camera when `camera`."""
    layout = ObstacleLayout.preset(num_modes)
    env_names = ["goal_x", "goal_y"]
    for k in range(layout.num_obstacles):
        env_names += [f"obstacle{k}_x", f"obstacle{k}_y"]
    features: dict[str, dict[str, Any]] = {
        OBS_STATE: {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        OBS_ENV_STATE: {"dtype": "float32", "shape": (len(env_names),), "names": env_names},
        ACTION: {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        EXPERT_MODE: {"dtype": "int64", "shape": (1,), "names": None},
    }
    if camera:
        if calibration is None:
            raise ValueError("The obstacle task's camera is fixed: give its calibration (calibration_info).")
        features.update(camera_features(CAMERA_NAME, image_size, image_size, calibration, depth_storage, rgb_storage))
    return features


def camera_calibration(observation: dict[str, Any]) -> dict[str, Any]:
    """The info entries of the fixed camera's calibration, from an observation of the env."""
    return calibration_info(
        CAMERA_NAME,
        observation[f"camera.{CAMERA_NAME}.intrinsics"],
        observation[f"camera.{CAMERA_NAME}.extrinsics"],
        "ObstacleReachEnv",
    )


def _frame(
    observation: dict[str, Any], action: np.ndarray, mode: int, task: str, calibration: dict[str, Any] | None
) -> dict:
    frame: dict[str, Any] = {
        OBS_STATE: np.asarray(observation["agent_pos"], dtype=np.float32),
        OBS_ENV_STATE: np.asarray(observation["environment_state"], dtype=np.float32),
        ACTION: np.asarray(action, dtype=np.float32),
        EXPERT_MODE: np.array([mode], dtype=np.int64),
        "task": task,
    }
    if calibration is not None:
        frame |= camera_frame(
            CAMERA_NAME,
            observation["pixels"][CAMERA_NAME],
            observation[f"depth.{CAMERA_NAME}"],
            observation[f"camera.{CAMERA_NAME}.intrinsics"],
            observation[f"camera.{CAMERA_NAME}.extrinsics"],
            calibration,
        )
    return frame


def expert_episodes(
    num_episodes: int, num_modes: int = 2, camera: bool = False, image_size: int = 64, seed: int = 0
) -> Iterator[ExpertEpisode]:
    """The expert rollouts `generate_obstacle_dataset` writes for the same arguments, in order."""
    env = ObstacleReachEnv(num_modes=num_modes, camera=camera, image_size=image_size)
    env_seeds, expert_seed = np.random.SeedSequence(seed).spawn(2)
    # One independent seed per episode makes any single episode reproducible on its own.
    episode_seeds = env_seeds.generate_state(num_episodes)
    expert = ScriptedExpert(env.layout, seed=np.random.default_rng(expert_seed))
    try:
        for episode_seed in episode_seeds:
            yield run_expert_episode(env, expert, seed=int(episode_seed))
    finally:  # also when the caller stops early or raises: closing the generator runs this
        env.close()


def generate_obstacle_dataset(
    root: Path,
    repo_id: str = DEFAULT_REPO_ID,
    num_episodes: int = 200,
    num_modes: int = 2,
    camera: bool = False,
    image_size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    depth_storage: str = "video",
    rgb_storage: str = "auto",
) -> Path:
    """Roll the scripted expert `num_episodes` times and write the demonstrations to `root`.

    The dataset is built in a temporary folder beside `root` and renamed into place only once it is
    complete, so an interrupted or failed run (KeyboardInterrupt included) leaves nothing at `root`,
    nor a temporary folder. Load the result offline with `LeRobotDataset(repo_id, root=root)`.

    `depth_storage` / `rgb_storage`: how the camera is stored (`datasets.features`).

    Raises FileExistsError if `root` exists and `overwrite` is False, ValueError for an unsupported
    `num_modes` (2 or 4) or `num_episodes` < 1.
    """
    root = Path(root)
    if num_modes not in (2, 4):
        raise ValueError(f"num_modes must be 2 or 4, got {num_modes!r}")
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be at least 1, got {num_episodes!r}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size!r}")
    check_destination(root, overwrite)
    # Closed on every path, an early stop or an error included: the generator's clean-up closes the env.
    with closing(expert_episodes(num_episodes, num_modes, camera, image_size, seed)) as generator:
        episodes: Iterator[ExpertEpisode] = generator
        calibration = None
        if camera:
            # The camera is fixed: its calibration, read off the first observation, goes into the feature spec.
            first = next(generator)
            calibration = camera_calibration(first.observations[0])
            episodes = itertools.chain([first], generator)
        features = obstacle_dataset_features(num_modes, camera, image_size, calibration, depth_storage, rgb_storage)
        with atomic_lerobot_dataset(
            root,
            overwrite=overwrite,
            repo_id=repo_id,
            fps=FPS,
            features=features,
            robot_type="flowstep_obstacle",
            use_videos=uses_video(features),
        ) as dataset:
            progress = tqdm(episodes, total=num_episodes, desc="expert episodes", unit="episode")
            for index, episode in enumerate(progress):
                if not episode.success:
                    raise RuntimeError(f"expert failed episode {index} (mode {episode.mode})")
                for observation, action in zip(episode.observations[:-1], episode.actions, strict=True):
                    dataset.add_frame(_frame(observation, action, episode.mode, TASK_DESCRIPTION, calibration))
                dataset.save_episode()
    return root
