"""LeRobot env type `flowstep_metaworld`: `lerobot-eval --env.type=flowstep_metaworld --env.task=push-v3`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from gymnasium.envs.registration import register, registry
from lerobot.configs import PolicyFeature
from lerobot.envs.configs import EnvConfig

from lerobot_flowstep.envs.configs import FlowstepGymIds, arm_camera_features
from lerobot_flowstep.metaworld.env import ACTION_DIM, DEFAULT_CAMERAS, METAWORLD_GYM_ID, STATE_NAMES
from lerobot_flowstep.metaworld.tasks import metaworld_task

# Module reloads (tests, notebooks) re-run this file; gymnasium warns and overrides on re-registration.
if METAWORLD_GYM_ID not in registry:
    register(id=METAWORLD_GYM_ID, entry_point="lerobot_flowstep.metaworld.env:MetaworldRGBDEnv", max_episode_steps=200)

# The cameras of metaworld 3.0 (LeRobot 0.6's pin); 3.1 adds `corner4`, left out so configs work on both.
KNOWN_CAMERAS = ("topview", "corner", "corner2", "corner3", "behindGripper", "gripperPOV")


@EnvConfig.register_subclass("flowstep_metaworld")
@dataclass
class MetaworldEnvConfig(FlowstepGymIds, EnvConfig):
    """A MetaWorld task with RGB-D cameras (see `lerobot_flowstep.metaworld.env`).

    `cameras` and `image_size` must match the dataset the policy was trained on (`lerobot-flowstep generate
    metaworld`). `episode_length` is 200 as in DP3's evaluations; MetaWorld's experts need 47-123 steps on
    average, a few episodes up to ~250.
    """

    gym_name: ClassVar[str | None] = METAWORLD_GYM_ID.removeprefix("flowstep/")
    task: str | None = "push-v3"
    fps: int = 80
    episode_length: int = 200
    cameras: list[str] = field(default_factory=lambda: list(DEFAULT_CAMERAS))
    image_size: int = 128
    render_mode: str = "rgb_array"
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.task = metaworld_task(self.task or "").name  # unknown names fail here, listing the known ones
        unknown = [c for c in self.cameras if c not in KNOWN_CAMERAS]
        if unknown or not self.cameras:
            raise ValueError(f"env.cameras must be among {list(KNOWN_CAMERAS)}, got {unknown or self.cameras}.")
        if not 1 <= self.episode_length <= 500:
            raise ValueError(f"env.episode_length must be in [1, 500] (MetaWorld's cap), got {self.episode_length}.")
        if self.image_size < 8:
            raise ValueError(f"env.image_size must be at least 8, got {self.image_size}.")
        # Rebuilt rather than merged so that draccus-parsed or copied configs never keep stale entries.
        self.features, self.features_map = arm_camera_features(
            ACTION_DIM, len(STATE_NAMES), self.cameras, self.image_size
        )

    @property
    def gym_kwargs(self) -> dict:
        return {
            "task": self.task,
            "cameras": list(self.cameras),
            "image_size": self.image_size,
            "render_mode": self.render_mode,
            # Consumed by gym.make, which wraps the env in a TimeLimit of this length.
            "max_episode_steps": self.episode_length,
        }
