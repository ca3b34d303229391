"""MetaWorld with RGB-D: the `flowstep/MetaWorld-v0` gym env behind the `flowstep_metaworld` env type.

Per step the observation holds, for each camera of `cameras`:
- `pixels/<cam>` (H, W, 3) uint8 -> `observation.images.<cam>`;
- `depth.<cam>` (1, H, W) float32 metres along the optical axis -> `observation.depth.<cam>`;
- `camera.<cam>.intrinsics` (3, 3), `.extrinsics` (4, 4) camera-to-world, OpenCV axes -> `observation.camera.*`;
and `agent_pos` (13,) -> `observation.state`: the hand position and gripper opening LeRobot's `metaworld` env
gives (`obs[:4]`), then the tool-centre point and the two finger pads DP3 uses (`STATE_NAMES`).

Action (4,): hand displacement and gripper effort in [-1, 1], MetaWorld's own. `info["is_success"]` is
MetaWorld's success flag; an episode ends at success or after `max_episode_steps` (gymnasium's TimeLimit).

Episodes are reproducible: `reset(seed=s)` restores MuJoCo's initial state and seeds MetaWorld's object placement
(`env.seed(s)`; MetaWorld ignores the seed argument of its own `reset`), so a seed gives the same scene, bit for
bit, whatever ran before it and in any process. The corner2
camera is moved where DP3 and LeRobot put it. MetaWorld and MuJoCo are imported when an env is built, after
`MUJOCO_GL` defaults to `egl` (offscreen, no display needed).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lerobot_flowstep.metaworld.rendering import CameraRenderer, import_mujoco
from lerobot_flowstep.metaworld.tasks import metaworld_task

METAWORLD_GYM_ID = "flowstep/MetaWorld-v0"
ACTION_DIM = 4
STATE_NAMES = [
    "hand_x", "hand_y", "hand_z", "gripper_opening",
    "tcp_x", "tcp_y", "tcp_z",
    "right_pad_x", "right_pad_y", "right_pad_z",
    "left_pad_x", "left_pad_y", "left_pad_z",
]  # fmt: skip
# Where DP3 and LeRobot's `metaworld` env put corner2: the whole table in view, from the front and above.
CAMERA_POSITIONS = {"corner2": (0.75, 0.075, 0.7)}
DEFAULT_CAMERAS = ("corner2",)
# MetaWorld's own cap; evaluation episodes are shorter (EnvConfig.episode_length), as in DP3.
MAX_PATH_LENGTH = 500


def make_metaworld_env(task: str, seed: int = 0) -> Any:
    """MetaWorld's env of `task` with object placement drawn anew at every reset, from `env.seed`."""
    import_mujoco()
    import metaworld

    name = metaworld_task(task).name
    benchmark = metaworld.MT1(name, seed=seed)
    env = benchmark.train_classes[name]()
    env.set_task(benchmark.train_tasks[0])
    # MT1 freezes one placement per task; unfrozen and seeded, each seed is its own reproducible scene.
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    for camera, position in CAMERA_POSITIONS.items():
        env.model.cam_pos[env.model.camera(camera).id] = position
    return env


def robot_state(env: Any, observation: np.ndarray) -> np.ndarray:
    """`STATE_NAMES` of the current state; `observation` is MetaWorld's own (39,) observation."""
    return np.concatenate(
        [
            observation[:4],
            env.tcp_center,
            env._get_site_pos("rightEndEffector"),
            env._get_site_pos("leftEndEffector"),
        ]
    ).astype(np.float32)


class MetaworldRGBDEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str = "push-v3",
        cameras: list[str] | tuple[str, ...] = DEFAULT_CAMERAS,
        image_size: int = 128,
        render_mode: str = "rgb_array",
        max_episode_steps: int | None = None,
    ):
        super().__init__()
        self.task = metaworld_task(task)
        self.cameras = list(cameras)
        if not self.cameras:
            raise ValueError("MetaWorld env needs at least one camera.")
        self.image_size = image_size
        self.render_mode = render_mode
        self.task_description = self.task.description
        self._mujoco = import_mujoco()
        self._env = make_metaworld_env(self.task.name)
        try:
            self.renderer = CameraRenderer(self._env.model, self.cameras, image_size, image_size)
        except BaseException:
            self._env.close()  # gymnasium never closes an env whose constructor raised
            raise
        size = (image_size, image_size)
        obs_spaces: dict[str, spaces.Space] = {
            "pixels": spaces.Dict({cam: spaces.Box(0, 255, shape=(*size, 3), dtype=np.uint8) for cam in self.cameras}),
            "agent_pos": spaces.Box(-np.inf, np.inf, shape=(len(STATE_NAMES),), dtype=np.float32),
        }
        for cam in self.cameras:
            obs_spaces[f"depth.{cam}"] = spaces.Box(0.0, np.inf, shape=(1, *size), dtype=np.float32)
            obs_spaces[f"camera.{cam}.intrinsics"] = spaces.Box(-np.inf, np.inf, shape=(3, 3), dtype=np.float32)
            obs_spaces[f"camera.{cam}.extrinsics"] = spaces.Box(-np.inf, np.inf, shape=(4, 4), dtype=np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self._last_pixels: np.ndarray | None = None
        self._raw: np.ndarray | None = None  # MetaWorld's own observation, which its scripted policies read
        self._expert: Any = None

    @property
    def unwrapped_metaworld(self) -> Any:
        """MetaWorld's own env (its physics, sites and reward), for experts and tests."""
        return self._env

    def _observation(self, raw: np.ndarray) -> dict[str, Any]:
        data = self._env.data
        obs: dict[str, Any] = {"pixels": {}, "agent_pos": robot_state(self._env, raw)}
        for cam in self.cameras:
            rgb, depth = self.renderer.render(data, cam)
            obs["pixels"][cam] = rgb
            obs[f"depth.{cam}"] = depth[None]
            obs[f"camera.{cam}.intrinsics"] = self.renderer.intrinsics(cam).astype(np.float32)
            obs[f"camera.{cam}.extrinsics"] = self.renderer.extrinsics(data, cam).astype(np.float32)
        self._last_pixels = obs["pixels"][self.cameras[0]]
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, Any], dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(seed)
        # MetaWorld's reset moves the arm home from wherever the last episode left it, so a scene would depend
        # on the episodes before it; from MuJoCo's initial state, a seed gives one scene in any env or process.
        self._mujoco.mj_resetData(self._env.model, self._env.data)
        raw, _ = self._env.reset()
        self._raw = raw
        return self._observation(raw), {"is_success": False, "task": self.task.name}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"MetaWorld actions have shape ({ACTION_DIM},), got {action.shape}.")
        raw, reward, _, truncated, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._raw = raw
        success = bool(info.get("success", 0.0))
        info = {**info, "is_success": success, "task": self.task.name}
        # MetaWorld truncates at its own 500-step cap; the TimeLimit of gym.make owns the episode length.
        return self._observation(raw), float(reward), success, bool(truncated), info

    def expert_action(self) -> np.ndarray:
        """MetaWorld's scripted policy for this task, on the current state."""
        if self._raw is None:
            raise RuntimeError("Call reset() before asking for the expert's action.")
        if self._expert is None:
            import metaworld.policies

            self._expert = getattr(metaworld.policies, self.task.expert)()
        return np.asarray(self._expert.get_action(self._raw), dtype=np.float32)

    def render(self) -> np.ndarray | None:
        return self._last_pixels

    def close(self) -> None:
        self.renderer.close()
        self._env.close()
