"""LeRobot env type `rlbench`: RLBench tasks for `lerobot-eval`, with the observations the converter writes.

`lerobot-eval --env.type=rlbench --env.task=<task>` wraps RLBench's gymnasium env (`rlbench.gym.RLBenchEnv`)
and returns, per step, what `lerobot_flowstep.rlbench.converter` stores per frame, with the same code:
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
`FakeRLBenchBackend`, a small ray-cast reaching scene with RLBench's camera conventions: a testing aid
for the wrapper and the `lerobot-eval` loop, not a simulator of RLBench's tasks. `RLBenchGymBackend` has
not been run against a real RLBench/CoppeliaSim installation (none could be installed where it was written);
only its interface is exercised, through the fake.

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
from types import SimpleNamespace
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.registration import register, registry
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from lerobot_flowstep.constants import OBS_POINTCLOUD
from lerobot_flowstep.core.geometry import camera_rays
from lerobot_flowstep.envs.configs import add_camera_features
from lerobot_flowstep.envs.obstacle import look_at_extrinsics
from lerobot_flowstep.rlbench.converter import (
    DEFAULT_BOUNDS_HIGH,
    DEFAULT_BOUNDS_LOW,
    FPS,
    RLBENCH_CAMERAS,
    STATE_NAMES,
    canonical_quaternion,
    fused_pointclouds,
    opencv_camera,
    proprio_state,
    rlbench_pointcloud_config,
)

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


# --- RLBench-style cameras and the fake scene -------------------------------------------------------


def rlbench_camera_parameters(
    eye: np.ndarray, target: np.ndarray, image_size: int, fov_deg: float, up: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics and camera-to-world extrinsics of a look-at camera in RLBench's convention.

    PyRep writes focal lengths as negative numbers with the principal point at the image centre; the
    matching extrinsics have the camera's x and y axes flipped with respect to OpenCV's.
    """
    focal = (image_size / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    intrinsics = np.array([[-focal, 0.0, image_size / 2.0], [0.0, -focal, image_size / 2.0], [0.0, 0.0, 1.0]])
    extrinsics = look_at_extrinsics(np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64), up)
    extrinsics[:3, :2] *= -1.0
    return intrinsics, extrinsics


@dataclass(frozen=True)
class FakeCamera:
    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_deg: float
    far: float
    near: float = 0.01


# Roughly where RLBench mounts its cameras; the wrist camera follows the gripper, looking down.
FAKE_CAMERAS = {
    "front": FakeCamera((1.35, 0.0, 1.58), (0.2, 0.0, 0.75), 40.0, 4.5),
    "left_shoulder": FakeCamera((-0.175, 0.2, 1.98), (0.35, -0.05, 0.75), 40.0, 3.2),
    "right_shoulder": FakeCamera((-0.175, -0.2, 1.98), (0.35, 0.05, 0.75), 40.0, 3.2),
    "overhead": FakeCamera((-0.175, 0.0, 2.43), (0.35, 0.0, 0.75), 40.0, 3.3),
    "wrist": FakeCamera((0.0, 0.0, 0.0), (0.0, 0.0, -1.0), 60.0, 3.5),
}
TABLE_HEIGHT = 0.752
TABLE_EXTENT = ((-0.45, 0.95), (-0.75, 0.75))
HOME_POSE = np.array([0.28, 0.0, 1.47, 0.0, 0.9927, 0.0, 0.1209])
HOME_POSE[3:] /= np.linalg.norm(HOME_POSE[3:])


def _box_hit(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, half: float) -> np.ndarray:
    """Ray parameter of the entry into an axis-aligned cube (inf on a miss or from inside)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (center - half - origin) / dirs
        t2 = (center + half - origin) / dirs
    t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.where((t_near <= t_far) & (t_near > 0.0), t_near, np.inf)


class FakeRLBenchScene:
    """Ray-cast RGB and depth of a table, a floor, a red target cube and a blue gripper cube."""

    def __init__(self, cameras: list[str], image_size: int) -> None:
        unknown = [c for c in cameras if c not in FAKE_CAMERAS]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; RLBench's cameras are {list(RLBENCH_CAMERAS)}")
        self.cameras = list(cameras)
        self.image_size = int(image_size)

    def camera(self, name: str, gripper_position: np.ndarray) -> tuple[np.ndarray, np.ndarray, FakeCamera]:
        spec = FAKE_CAMERAS[name]
        if name == "wrist":
            eye = np.asarray(gripper_position, dtype=np.float64)
            k, t = rlbench_camera_parameters(
                eye, eye - [0.0, 0.0, 1.0], self.image_size, spec.fov_deg, np.array([1.0, 0, 0])
            )
        else:
            k, t = rlbench_camera_parameters(np.array(spec.eye), np.array(spec.target), self.image_size, spec.fov_deg)
        return k, t, spec

    def render(self, name: str, gripper_position: np.ndarray, goal: np.ndarray) -> dict[str, Any]:
        """{'rgb': (H, W, 3) uint8, 'depth': (H, W) metres, 'intrinsics', 'extrinsics' (RLBench), 'near', 'far'}."""
        k, t, spec = self.camera(name, gripper_position)
        k_cv, t_cv = opencv_camera(k, t)
        rays = camera_rays(torch.from_numpy(k_cv), self.image_size, self.image_size).numpy().reshape(-1, 3)
        origin = t_cv[:3, 3]
        dirs = rays @ t_cv[:3, :3].T  # camera-frame z = 1, so a hit's ray parameter is its depth
        with np.errstate(divide="ignore", invalid="ignore"):
            t_table = (TABLE_HEIGHT - origin[2]) / dirs[:, 2]
            t_floor = -origin[2] / dirs[:, 2]
        hit = origin + t_table[:, None] * dirs
        on_table = (t_table > 0) & (hit[:, 0] >= TABLE_EXTENT[0][0]) & (hit[:, 0] <= TABLE_EXTENT[0][1])
        on_table &= (hit[:, 1] >= TABLE_EXTENT[1][0]) & (hit[:, 1] <= TABLE_EXTENT[1][1])
        depth = np.where(on_table, t_table, np.where(t_floor > 0, t_floor, np.inf))
        checker = (np.floor(hit[:, 0] / 0.1) + np.floor(hit[:, 1] / 0.1)) % 2
        table_rgb = np.where(checker[:, None] > 0, [185, 145, 105], [160, 120, 85])
        colour = np.where(on_table[:, None], table_rgb, [90, 90, 95]).astype(np.float64)
        for center, half, rgb in ((goal, 0.025, (220, 40, 40)), (gripper_position, 0.03, (40, 60, 220))):
            t_box = _box_hit(origin, dirs, np.asarray(center, dtype=np.float64), half)
            closer = t_box < depth
            depth = np.where(closer, t_box, depth)
            colour = np.where(closer[:, None], rgb, colour)
        depth = np.clip(depth, spec.near, spec.far)
        colour = np.where((depth >= spec.far)[:, None], 0.0, colour)
        size = (self.image_size, self.image_size)
        return {
            "rgb": colour.astype(np.uint8).reshape(*size, 3),
            "depth": depth.astype(np.float32).reshape(size),
            "intrinsics": k,
            "extrinsics": t,
            "near": spec.near,
            "far": spec.far,
        }

    def observation(self, joints: np.ndarray, gripper_open: float, pose: np.ndarray, goal: np.ndarray) -> Any:
        """An object with RLBench `Observation` attributes for this state."""
        obs = SimpleNamespace(
            joint_positions=np.asarray(joints, dtype=np.float64),
            joint_velocities=np.zeros(7),
            gripper_open=float(gripper_open),
            gripper_pose=np.asarray(pose, dtype=np.float64),
            task_low_dim_state=np.asarray(goal, dtype=np.float64),
            misc={},
        )
        for name in self.cameras:
            view = self.render(name, pose[:3], goal)
            setattr(obs, f"{name}_rgb", view["rgb"])
            setattr(obs, f"{name}_depth", view["depth"])
            obs.misc[f"{name}_camera_intrinsics"] = view["intrinsics"]
            obs.misc[f"{name}_camera_extrinsics"] = view["extrinsics"]
            obs.misc[f"{name}_camera_near"] = view["near"]
            obs.misc[f"{name}_camera_far"] = view["far"]
        return obs


class FakeInvalidActionError(RuntimeError):
    """The fake backend's counterpart of RLBench's InvalidActionError (target outside its reach)."""


class FakeRLBenchBackend:
    """Reach a red cube: the gripper moves to each commanded pose (as RLBench's planning mode does) and the
    episode succeeds once it is within `success_radius` of the cube. Fake joint readings are the pose.

    A testing aid for `RLBenchEnv` and the `lerobot-eval` loop; it knows nothing about RLBench's tasks.
    """

    invalid_action_errors = (FakeInvalidActionError,)

    def __init__(
        self,
        task: str,
        cameras: list[str],
        image_size: int,
        success_radius: float = 0.05,
        # Beyond the env's default action bounds, so that only a custom reach triggers invalid actions.
        reach_low: tuple[float, float, float] = (-0.35, -0.55, 0.55),
        reach_high: tuple[float, float, float] = (0.75, 0.55, 1.65),
    ) -> None:
        self.task = task
        self.scene = FakeRLBenchScene(cameras, image_size)
        self.success_radius = success_radius
        self.reach_low, self.reach_high = np.array(reach_low), np.array(reach_high)
        self.rng = np.random.default_rng()
        self.pose = HOME_POSE.copy()
        self.gripper_open = 1.0
        self.goal = np.array([0.2, 0.0, 0.9])
        self.steps = 0

    def _observation(self) -> Any:
        return self.scene.observation(self.pose.copy(), self.gripper_open, self.pose, self.goal)

    def reset(self, seed: int | None) -> tuple[Any, list[str]]:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.pose = HOME_POSE.copy()
        self.gripper_open = 1.0
        self.goal = self.rng.uniform([0.0, -0.3, 0.8], [0.4, 0.3, 1.1])
        self.steps = 0
        return self._observation(), ["reach the red target", "touch the red ball with the gripper"]

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool]:
        position = np.asarray(action[:3], dtype=np.float64)
        if np.any(position < self.reach_low) or np.any(position > self.reach_high):
            raise FakeInvalidActionError(f"target {position.round(3).tolist()} is outside the fake arm's reach")
        self.pose = np.concatenate([position, action[3:7]])
        self.gripper_open = float(action[7])
        self.steps += 1
        success = bool(np.linalg.norm(position - self.goal) <= self.success_radius)
        return self._observation(), float(success), success, success

    def render(self) -> np.ndarray:
        return self.scene.render("front", self.pose[:3], self.goal)["rgb"]

    def close(self) -> None:
        pass


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
class RLBenchEnvConfig(EnvConfig):
    """An RLBench task through `make_env` / `lerobot-eval --env.type=rlbench` (see `RLBenchEnv`).

    `cameras`, `image_size` and the point-cloud fields must match the converted dataset the policy was
    trained on (`lerobot-flowstep convert rlbench --cameras ...`). `backend="fake"` is a testing aid.
    """

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
        size = (self.image_size, self.image_size)
        features: dict[str, PolicyFeature] = {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(len(STATE_NAMES),)),
        }
        features_map = {ACTION: ACTION, "agent_pos": OBS_STATE}
        for cam in self.cameras:
            add_camera_features(features, features_map, cam, size)
        if self.pointcloud_cameras:
            width = 6 if self.pointcloud_use_rgb else 3
            features["pointcloud"] = PolicyFeature(type=FeatureType.STATE, shape=(self.pointcloud_num_points, width))
            features_map["pointcloud"] = OBS_POINTCLOUD
        # Rebuilt rather than merged so that draccus-parsed or copied configs never keep stale entries.
        self.features = features
        self.features_map = features_map

    @property
    def package_name(self) -> str:
        return "lerobot_flowstep"

    @property
    def gym_id(self) -> str:
        return RLBENCH_GYM_ID

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
