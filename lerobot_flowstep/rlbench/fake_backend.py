"""`FakeRLBenchBackend`: a small ray-cast reaching scene with RLBench's camera conventions, behind the
backend interface of `lerobot_flowstep.rlbench.env` (`backend="fake"`). A testing aid for the wrapper and the
`lerobot-eval` loop, not a simulator of RLBench's tasks."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from lerobot_flowstep.core.geometry import camera_rays
from lerobot_flowstep.rlbench.conventions import HOME_POSE, RLBENCH_CAMERAS, opencv_camera, rlbench_camera_parameters


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
