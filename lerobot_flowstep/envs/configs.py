"""LeRobot env type `flowstep_obstacle`: ObstacleReach through `make_env` / `lerobot-eval --env.type=...`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

from lerobot_flowstep.constants import depth_key, extrinsics_key, intrinsics_key
from lerobot_flowstep.envs.obstacle import CAMERA_NAME, ObstacleLayout


def add_camera_features(
    features: dict[str, PolicyFeature], features_map: dict[str, str], camera: str, size: tuple[int, int]
) -> None:
    """An env camera's RGB, depth and camera parameters, keyed as the env emits them and mapped to the
    policy keys of `lerobot_flowstep.constants` (depth and parameters are STATE features, as
    `dataset_to_policy_features` types their float columns)."""
    features[f"pixels/{camera}"] = PolicyFeature(type=FeatureType.VISUAL, shape=(*size, 3))
    features[f"depth.{camera}"] = PolicyFeature(type=FeatureType.STATE, shape=(1, *size))
    features[f"camera.{camera}.intrinsics"] = PolicyFeature(type=FeatureType.STATE, shape=(3, 3))
    features[f"camera.{camera}.extrinsics"] = PolicyFeature(type=FeatureType.STATE, shape=(4, 4))
    features_map[f"pixels/{camera}"] = f"{OBS_IMAGES}.{camera}"
    features_map[f"depth.{camera}"] = depth_key(camera)
    features_map[f"camera.{camera}.intrinsics"] = intrinsics_key(camera)
    features_map[f"camera.{camera}.extrinsics"] = extrinsics_key(camera)


def arm_camera_features(
    action_dim: int, state_dim: int, cameras: list[str], image_size: int
) -> tuple[dict[str, PolicyFeature], dict[str, str]]:
    """`features` and `features_map` of an arm env: its action, `agent_pos` -> `observation.state`, and each
    camera's RGB, depth and parameters at a square `image_size` (`add_camera_features`)."""
    features: dict[str, PolicyFeature] = {
        ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,)),
        "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(state_dim,)),
    }
    features_map = {ACTION: ACTION, "agent_pos": OBS_STATE}
    for camera in cameras:
        add_camera_features(features, features_map, camera, (image_size, image_size))
    return features, features_map


class FlowstepGymIds:
    """For env configs whose gym ids are registered under `flowstep/` when this package is imported (which is
    what LeRobot's `create_envs` imports when the id is not yet known): `flowstep/<gym_name>`, or
    `flowstep/<task>` for configs whose task is the gym id."""

    task: str | None
    gym_name: ClassVar[str | None] = None

    @property
    def package_name(self) -> str:
        return "lerobot_flowstep"

    @property
    def gym_id(self) -> str:
        return f"flowstep/{self.gym_name or self.task}"


@EnvConfig.register_subclass("flowstep_obstacle")
@dataclass
class ObstacleEnvConfig(FlowstepGymIds, EnvConfig):
    """ObstacleReach (see `lerobot_flowstep.envs.obstacle`); `num_modes` is 2 or 4.

    `features` / `features_map` are keyed by the env's raw observation keys (LeRobot's convention, with
    `pixels/<cam>` for the nested pixel dict) and map to the dataset/policy keys written by
    `lerobot_flowstep.datasets.obstacle_dataset`. Depth and camera parameters are STATE features, which
    is also how `dataset_to_policy_features` types their float columns in the dataset.
    """

    task: str | None = "ObstacleReach-v0"
    fps: int = 10
    episode_length: int = 80
    num_modes: int = 2
    camera: bool = False
    image_size: int = 64
    render_mode: str = "rgb_array"
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layout = ObstacleLayout.preset(self.num_modes)  # validates num_modes early, at config parse time
        size = (self.image_size, self.image_size)
        features: dict[str, PolicyFeature] = {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(2,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(2,)),
            "environment_state": PolicyFeature(type=FeatureType.ENV, shape=(2 + 2 * layout.num_obstacles,)),
        }
        features_map = {
            ACTION: ACTION,
            "agent_pos": OBS_STATE,
            "environment_state": OBS_ENV_STATE,
        }
        if self.camera:
            add_camera_features(features, features_map, CAMERA_NAME, size)
        # Rebuilt rather than merged so that draccus-parsed or copied configs never keep stale entries.
        self.features = features
        self.features_map = features_map

    @property
    def gym_kwargs(self) -> dict:
        return {
            "num_modes": self.num_modes,
            "camera": self.camera,
            "image_size": self.image_size,
            "render_mode": self.render_mode,
            # Consumed by gym.make, which wraps the env in a TimeLimit of this length.
            "max_episode_steps": self.episode_length,
        }
