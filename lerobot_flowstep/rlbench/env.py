"""LeRobot env type `rlbench`: RLBench tasks for `lerobot-eval`, with the observations the converter writes.

`lerobot-eval --env.type=rlbench --env.task=<task>` wraps RLBench's gymnasium env (`rlbench.gym.RLBenchEnv`)
and returns, per step, what `lerobot_flowstep.rlbench.converter` stores per frame, with the same code
(`lerobot_flowstep.rlbench.conventions`):
- `pixels/<cam>` (H, W, 3) uint8 -> `observation.images.<cam>`;
- `agent_pos` (15,) -> `observation.state` (joints, gripper open, gripper position, canonical quaternion);
- `depth.<cam>` (1, H, W) float32 metres -> `observation.depth.<cam>`;
- `camera.<cam>.intrinsics` (3, 3) / `.extrinsics` (4, 4), OpenCV convention -> `observation.camera.<cam>.*`;
- with `pointcloud_cameras`, `pointcloud` (N, 3|6) -> `observation.pointcloud`, fused as the converter does.

Action (8,): absolute gripper pose (x, y, z, qx, qy, qz, qw) + gripper open, executed with RLBench's
`EndEffectorPoseViaPlanning` + `Discrete` gripper. The position is clipped to the workspace bounds, the
quaternion normalised and the gripper thresholded at 0.5 before RLBench sees them. An action RLBench cannot
plan (`InvalidActionError`) ends the episode as a failure, as in RLBench's own evaluations. The step limit
is `episode_length` (gymnasium's TimeLimit); `info["is_success"]` reports RLBench's success condition.

RLBench and PyRep need CoppeliaSim, so they are imported only when an env is built with the real backend,
and their absence raises `RLBenchUnavailableError` saying how to install them. `backend="fake"` selects
`FakeRLBenchBackend` (`lerobot_flowstep.rlbench.fake_backend`), a small ray-cast reaching scene with RLBench's
camera conventions: a testing aid for the wrapper and the `lerobot-eval` loop, not a simulator of RLBench's
tasks. `RLBenchGymBackend` has not been run against a real RLBench/CoppeliaSim installation (none could be
installed where it was written); only its interface is exercised, through the fake.

Backend interface (what `RLBenchEnv` needs; `FakeRLBenchBackend` and `RLBenchGymBackend` implement it):
- `reset(seed: int | None) -> (observation, descriptions: list[str])`;
- `step(action: np.ndarray (8,)) -> (observation, reward: float, terminated: bool, success: bool)`;
- `render() -> np.ndarray | None` (H, W, 3) uint8; `close() -> None`;
- `invalid_action_errors: tuple[type[BaseException], ...]`: errors of an action that cannot be executed.
An observation is an object with RLBench's `Observation` attributes: `<cam>_rgb` (H, W, 3) uint8,
`<cam>_depth` (H, W) metres, `joint_positions` (7,), `gripper_open`, `gripper_pose` (7,) and `misc` with
`<cam>_camera_intrinsics` / `<cam>_camera_extrinsics` in RLBench's convention (negative focal lengths).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import register, registry
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig

from lerobot_flowstep.constants import OBS_POINTCLOUD
from lerobot_flowstep.envs.configs import FlowstepGymIds, arm_camera_features
from lerobot_flowstep.processor.pointcloud import fused_pointclouds
from lerobot_flowstep.rlbench.conventions import (
    DEFAULT_BOUNDS_HIGH,
    DEFAULT_BOUNDS_LOW,
    FPS,
    HOME_POSE,
    RLBENCH_CAMERAS,
    STATE_NAMES,
    canonical_quaternion,
    opencv_camera,
    proprio_state,
    rlbench_pointcloud_config,
)
from lerobot_flowstep.rlbench.fake_backend import FakeRLBenchBackend

RLBENCH_GYM_ID = "flowstep/RLBench-v0"
BACKENDS = ("rlbench", "fake")
ACTION_DIM = 8

INSTALL_HINT = (
    "The `rlbench` env needs RLBench and PyRep, which drive the CoppeliaSim simulator (not pip-installable):\n"
    "  1. download CoppeliaSim 4.1.0 for your Ubuntu from https://www.coppeliarobotics.com/previousVersions\n"
    "     and export COPPELIASIM_ROOT=<its folder>, LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$COPPELIASIM_ROOT,\n"
    "     QT_QPA_PLATFORM_PLUGIN_PATH=$COPPELIASIM_ROOT;\n"
    "  2. pip install git+https://github.com/stepjam/PyRep.git git+https://github.com/stepjam/RLBench.git\n"
    "     (headless machines also need a virtual display, e.g. xvfb-run).\n"
    "To test the wrapper and the lerobot-eval loop without a simulator, use --env.backend=fake."
)


class RLBenchUnavailableError(ImportError):
    """RLBench, PyRep or CoppeliaSim could not be loaded."""


class RLBenchBackend(Protocol):
    """The simulator side of `RLBenchEnv`; see the module docstring."""

    invalid_action_errors: tuple[type[BaseException], ...]

    def reset(self, seed: int | None) -> tuple[Any, list[str]]: ...

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool]: ...

    def render(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class RLBenchGymBackend:
    """The real simulator: `rlbench.gym.RLBenchEnv` in vision mode with an absolute end-effector-pose action
    mode, subclassed only to keep the raw RLBench observation (its gym dict lacks depth and camera
    parameters). Depth arrives normalised to [0, 1] (RLBench's default) and is turned into metres with the
    frame's near/far planes, as the converter does.
    """

    def __init__(self, task: str, cameras: list[str], image_size: int) -> None:
        try:
            from rlbench.action_modes.action_mode import MoveArmThenGripper
            from rlbench.action_modes.arm_action_modes import EndEffectorPoseViaPlanning
            from rlbench.action_modes.gripper_action_modes import Discrete
            from rlbench.backend.exceptions import InvalidActionError
            from rlbench.gym import RLBenchEnv as RLBenchGymEnv
            from rlbench.utils import name_to_task_class
        except Exception as err:  # noqa: BLE001 - PyRep raises its own errors when CoppeliaSim is missing
            raise RLBenchUnavailableError(
                f"cannot import RLBench ({type(err).__name__}: {err}).\n{INSTALL_HINT}"
            ) from err

        class _KeepRawObservation(RLBenchGymEnv):
            def _extract_obs(self, rlbench_obs: Any) -> dict:
                self.last_rlbench_obs = rlbench_obs
                return super()._extract_obs(rlbench_obs)

        self.task = task
        self.cameras = list(cameras)
        self.image_size = image_size
        self.invalid_action_errors = (InvalidActionError,)
        self._env = _KeepRawObservation(
            task_class=name_to_task_class(task),
            observation_mode="vision",
            render_mode="rgb_array",
            action_mode=MoveArmThenGripper(EndEffectorPoseViaPlanning(absolute_mode=True), Discrete()),
        )

    def _observation(self) -> Any:
        obs = self._env.last_rlbench_obs
        for cam in self.cameras:
            rgb = getattr(obs, f"{cam}_rgb", None)
            if rgb is None or tuple(rgb.shape[:2]) != (self.image_size, self.image_size):
                raise ValueError(
                    f"RLBench camera '{cam}' returned {None if rgb is None else rgb.shape}, expected "
                    f"({self.image_size}, {self.image_size}, 3): set env.image_size to the cameras' resolution."
                )
            depth = np.asarray(getattr(obs, f"{cam}_depth"), dtype=np.float64)
            camera_config = getattr(self._env.obs_config, f"{cam}_camera", None)
            if not getattr(camera_config, "depth_in_meters", False):
                near, far = obs.misc[f"{cam}_camera_near"], obs.misc[f"{cam}_camera_far"]
                depth = near + depth * (far - near)
            setattr(obs, f"{cam}_depth", depth.astype(np.float32))
        return obs

    def reset(self, seed: int | None) -> tuple[Any, list[str]]:
        _, info = self._env.reset(seed=seed)
        return self._observation(), list(info.get("text_descriptions") or [])

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool]:
        _, reward, terminated, _, _ = self._env.step(np.asarray(action, dtype=np.float32))
        # RLBench's reward is float(success) unless a task defines its own.
        return self._observation(), float(reward), bool(terminated), bool(reward >= 1.0)

    def render(self) -> np.ndarray | None:
        return self._env.render()

    def close(self) -> None:
        self._env.close()


# --- the gym env -------------------------------------------------------------------------------------


class RLBenchEnv(gym.Env):
    """See the module docstring. `backend` is "rlbench", "fake" or an object with the backend interface."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(
        self,
        task: str = "reach_target",
        cameras: list[str] | tuple[str, ...] = RLBENCH_CAMERAS,
        image_size: int = 128,
        bounds_low: list[float] | tuple[float, ...] = DEFAULT_BOUNDS_LOW,
        bounds_high: list[float] | tuple[float, ...] = DEFAULT_BOUNDS_HIGH,
        pointcloud_cameras: list[str] | tuple[str, ...] = (),
        pointcloud_num_points: int = 1024,
        pointcloud_use_rgb: bool = False,
        backend: str | RLBenchBackend = "rlbench",
        render_mode: str | None = "rgb_array",
    ) -> None:
        super().__init__()
        cameras = list(cameras)
        unknown = [c for c in [*cameras, *pointcloud_cameras] if c not in RLBENCH_CAMERAS]
        if unknown or not cameras:
            raise ValueError(f"cameras must be among {list(RLBENCH_CAMERAS)}, got {unknown or cameras}")
        missing = [c for c in pointcloud_cameras if c not in cameras]
        if missing:
            raise ValueError(f"pointcloud_cameras {missing} must also be in cameras {cameras}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.task = task
        self.task_description = task.replace("_", " ")
        self.cameras = cameras
        self.image_size = int(image_size)
        self.render_mode = render_mode
        self.bounds_low = np.asarray(bounds_low, dtype=np.float64)
        self.bounds_high = np.asarray(bounds_high, dtype=np.float64)
        if (
            self.bounds_low.shape != (3,)
            or self.bounds_high.shape != (3,)
            or np.any(self.bounds_low >= self.bounds_high)
        ):
            raise ValueError(f"bounds_low {bounds_low} must be below bounds_high {bounds_high}, 3 numbers each")
        self.pointcloud = (
            rlbench_pointcloud_config(
                cameras=list(pointcloud_cameras),
                num_points=pointcloud_num_points,
                use_rgb=pointcloud_use_rgb,
                bounds_low=list(bounds_low),
                bounds_high=list(bounds_high),
            )
            if pointcloud_cameras
            else None
        )

        self.action_space = spaces.Box(
            low=np.array([*self.bounds_low, -1.0, -1.0, -1.0, -1.0, 0.0], dtype=np.float32),
            high=np.array([*self.bounds_high, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=np.float32),
            dtype=np.float32,
        )
        size = (self.image_size, self.image_size)
        obs_spaces: dict[str, spaces.Space] = {
            "pixels": spaces.Dict({c: spaces.Box(0, 255, shape=(*size, 3), dtype=np.uint8) for c in cameras}),
            "agent_pos": spaces.Box(-np.inf, np.inf, shape=(len(STATE_NAMES),), dtype=np.float32),
        }
        for cam in cameras:
            obs_spaces[f"depth.{cam}"] = spaces.Box(0.0, np.inf, shape=(1, *size), dtype=np.float32)
            obs_spaces[f"camera.{cam}.intrinsics"] = spaces.Box(-np.inf, np.inf, shape=(3, 3), dtype=np.float32)
            obs_spaces[f"camera.{cam}.extrinsics"] = spaces.Box(-np.inf, np.inf, shape=(4, 4), dtype=np.float32)
        if self.pointcloud is not None:
            width = 6 if pointcloud_use_rgb else 3
            obs_spaces["pointcloud"] = spaces.Box(
                -np.inf, np.inf, shape=(pointcloud_num_points, width), dtype=np.float32
            )
        self.observation_space = spaces.Dict(obs_spaces)

        if backend == "fake":
            self.backend: RLBenchBackend = FakeRLBenchBackend(task, cameras, self.image_size)
        elif backend == "rlbench":
            self.backend = RLBenchGymBackend(task, cameras, self.image_size)
        elif isinstance(backend, str):
            raise ValueError(f"backend must be one of {BACKENDS} or a backend object, got '{backend}'")
        else:
            self.backend = backend
        self._last_obs: dict[str, Any] | None = None
        self._last_pose = HOME_POSE.copy()

    def _convert(self, raw: Any) -> dict[str, Any]:
        pose = np.asarray(raw.gripper_pose, dtype=np.float64)
        self._last_pose = pose
        obs: dict[str, Any] = {
            "pixels": {},
            "agent_pos": proprio_state(raw.joint_positions, raw.gripper_open, pose),
        }
        depths, intrinsics, extrinsics = {}, {}, {}
        for cam in self.cameras:
            rgb = np.asarray(getattr(raw, f"{cam}_rgb"))
            depth = np.asarray(getattr(raw, f"{cam}_depth"), dtype=np.float32)
            expected = (self.image_size, self.image_size)
            if rgb.shape != (*expected, 3) or rgb.dtype != np.uint8 or depth.shape != expected:
                raise ValueError(
                    f"backend camera '{cam}' gave rgb {rgb.shape} {rgb.dtype} and depth {depth.shape}; expected "
                    f"{(*expected, 3)} uint8 and {expected}"
                )
            k, t = opencv_camera(raw.misc[f"{cam}_camera_intrinsics"], raw.misc[f"{cam}_camera_extrinsics"])
            obs["pixels"][cam] = rgb
            obs[f"depth.{cam}"] = depth[None]
            obs[f"camera.{cam}.intrinsics"] = k.astype(np.float32)
            obs[f"camera.{cam}.extrinsics"] = t.astype(np.float32)
            depths[cam], intrinsics[cam], extrinsics[cam] = depth, k, t
        if self.pointcloud is not None:
            cams = self.pointcloud.cameras
            obs["pointcloud"] = fused_pointclouds(
                [depths[c][None] for c in cams],
                [intrinsics[c][None] for c in cams],
                [extrinsics[c][None] for c in cams],
                self.pointcloud,
                colors=[obs["pixels"][c][None] for c in cams] if self.pointcloud.use_rgb else None,
                # As the processor step does: a frame whose cameras see nothing must not end the rollout.
                empty_fill=self.pointcloud.empty_fill,
            )[0]
        return obs

    def command(self, action: np.ndarray) -> np.ndarray:
        """The action RLBench receives: position clipped to the bounds, unit quaternion, gripper 0 or 1.

        A quaternion too short to normalise keeps the current orientation.
        """
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"RLBenchEnv expects {ACTION_DIM} finite numbers (x, y, z, qx, qy, qz, qw, gripper), got {action}"
            )
        position = np.clip(action[:3], self.bounds_low, self.bounds_high)
        norm = float(np.linalg.norm(action[3:7]))
        quaternion = action[3:7] / norm if norm > 1e-6 else canonical_quaternion(self._last_pose[3:])
        gripper = 1.0 if action[7] > 0.5 else 0.0
        return np.concatenate([position, quaternion, [gripper]])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        raw, descriptions = self.backend.reset(seed)
        self.task_description = descriptions[0] if descriptions else self.task.replace("_", " ")
        self._last_obs = self._convert(raw)
        return self._last_obs, {"is_success": False, "invalid_action": False}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        if self._last_obs is None:
            raise RuntimeError("RLBenchEnv.step() called before reset()")
        command = self.command(action)
        try:
            raw, reward, terminated, success = self.backend.step(command)
        except self.backend.invalid_action_errors as err:
            logging.warning("RLBench could not execute action %s: %s; the episode ends as a failure.", command, err)
            return self._last_obs, 0.0, True, False, {"is_success": False, "invalid_action": True}
        self._last_obs = self._convert(raw)
        return (
            self._last_obs,
            float(reward),
            bool(terminated),
            False,
            {"is_success": bool(success), "invalid_action": False},
        )

    def render(self) -> np.ndarray | None:
        frame = self.backend.render()
        if frame is None and self._last_obs is not None:
            frame = self._last_obs["pixels"][self.cameras[0]]
        return frame

    def close(self) -> None:
        self.backend.close()


# Module reloads (tests, notebooks) re-run this file; gymnasium warns and overrides on re-registration.
if RLBENCH_GYM_ID not in registry:
    register(
        id=RLBENCH_GYM_ID,
        entry_point="lerobot_flowstep.rlbench.env:RLBenchEnv",
        max_episode_steps=200,
        # gym.make(..., max_episode_steps=N) wraps the env in the TimeLimit that owns truncation.
    )


@EnvConfig.register_subclass("rlbench")
@dataclass
class RLBenchEnvConfig(FlowstepGymIds, EnvConfig):
    """An RLBench task through `make_env` / `lerobot-eval --env.type=rlbench` (see `RLBenchEnv`).

    `cameras`, `image_size` and the point-cloud fields must match the converted dataset the policy was
    trained on (`lerobot-flowstep convert rlbench --cameras ...`). `backend="fake"` is a testing aid.
    """

    gym_name: ClassVar[str | None] = RLBENCH_GYM_ID.removeprefix("flowstep/")
    task: str | None = "reach_target"
    fps: int = FPS
    episode_length: int = 200
    cameras: list[str] = field(default_factory=lambda: list(RLBENCH_CAMERAS))
    image_size: int = 128
    bounds_low: list[float] = field(default_factory=lambda: list(DEFAULT_BOUNDS_LOW))
    bounds_high: list[float] = field(default_factory=lambda: list(DEFAULT_BOUNDS_HIGH))
    # Non-empty: also emit `observation.pointcloud` as the converter's --pointcloud option stores it.
    pointcloud_cameras: list[str] = field(default_factory=list)
    pointcloud_num_points: int = 1024
    pointcloud_use_rgb: bool = False
    backend: str = "rlbench"
    render_mode: str = "rgb_array"
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"env.backend must be one of {BACKENDS}, got '{self.backend}'")
        unknown = [c for c in [*self.cameras, *self.pointcloud_cameras] if c not in RLBENCH_CAMERAS]
        if unknown or not self.cameras:
            raise ValueError(f"env.cameras must be among {list(RLBENCH_CAMERAS)}, got {unknown or self.cameras}")
        if self.episode_length < 1:
            raise ValueError(f"env.episode_length must be >= 1, got {self.episode_length}")
        features, features_map = arm_camera_features(ACTION_DIM, len(STATE_NAMES), self.cameras, self.image_size)
        if self.pointcloud_cameras:
            width = 6 if self.pointcloud_use_rgb else 3
            features["pointcloud"] = PolicyFeature(type=FeatureType.STATE, shape=(self.pointcloud_num_points, width))
            features_map["pointcloud"] = OBS_POINTCLOUD
        # Rebuilt rather than merged so that draccus-parsed or copied configs never keep stale entries.
        self.features = features
        self.features_map = features_map

    @property
    def gym_kwargs(self) -> dict:
        return {
            "task": self.task,
            "cameras": list(self.cameras),
            "image_size": self.image_size,
            "bounds_low": list(self.bounds_low),
            "bounds_high": list(self.bounds_high),
            "pointcloud_cameras": list(self.pointcloud_cameras),
            "pointcloud_num_points": self.pointcloud_num_points,
            "pointcloud_use_rgb": self.pointcloud_use_rgb,
            "backend": self.backend,
            "render_mode": self.render_mode,
            # Consumed by gym.make, which wraps the env in a TimeLimit of this length.
            "max_episode_steps": self.episode_length,
        }
