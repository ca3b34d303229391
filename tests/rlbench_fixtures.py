"""Small synthetic RLBench demos on disk, in the format RLBench's dataset generator writes.

`low_dim_obs.pkl` is pickled with classes whose module and name are RLBench's
(`rlbench.demo.Demo`, `rlbench.backend.observation.Observation`), registered in `sys.modules` only while
pickling, so the converter under test must read them through its own stand-ins. Images come from the fake
backend's ray-cast scene (RLBench camera conventions, negative focal lengths), depth PNGs are RGB-packed
24-bit as RLBench writes them.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lerobot_flowstep.rlbench.conventions import DEPTH_SCALE, HOME_POSE, RLBENCH_CAMERAS
from lerobot_flowstep.rlbench.fake_backend import FakeRLBenchScene


class Observation:
    """Pickled as `rlbench.backend.observation.Observation`."""

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


class Demo:
    """Pickled as `rlbench.demo.Demo`."""

    def __init__(self, observations: list[Observation], random_seed: Any = None) -> None:
        self._observations = observations
        self.random_seed = random_seed


@contextlib.contextmanager
def rlbench_modules() -> Iterator[None]:
    """Make `rlbench.demo.Demo` and `rlbench.backend.observation.Observation` resolvable for pickling."""
    names = ["rlbench", "rlbench.demo", "rlbench.backend", "rlbench.backend.observation"]
    if any(name in sys.modules for name in names):
        raise RuntimeError("a real or leftover rlbench module is loaded; the fixtures would not be synthetic")
    modules = {name: types.ModuleType(name) for name in names}
    Observation.__module__, Observation.__qualname__ = "rlbench.backend.observation", "Observation"
    Demo.__module__, Demo.__qualname__ = "rlbench.demo", "Demo"
    modules["rlbench.backend.observation"].Observation = Observation
    modules["rlbench.demo"].Demo = Demo
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)


def encode_depth(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """RLBench's depth PNG: (depth - near) / (far - near) as a 24-bit integer in R (high), G, B (low)."""
    normalized = np.clip((np.asarray(depth, dtype=np.float64) - near) / (far - near), 0.0, 1.0)
    packed = np.floor(normalized * DEPTH_SCALE + 0.5).astype(np.uint32)
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=-1).astype(np.uint8)


@dataclass
class SyntheticEpisode:
    path: Path
    poses: np.ndarray  # (T, 7) gripper poses
    joints: np.ndarray  # (T, 7)
    gripper_open: np.ndarray  # (T,)
    goal: np.ndarray
    depth: dict[str, np.ndarray]  # cam -> (T, H, W) rendered metres, before PNG quantisation


def trajectory(num_frames: int, goal: np.ndarray, close_at: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gripper poses easing from home to above the goal (stopping for the last frames), joints and gripper.

    The quaternion crosses w = 0 half way, where a "w >= 0" rule would flip its sign, and every third
    frame reports it with the opposite sign.
    """
    s = np.clip(np.linspace(0.0, 1.25, num_frames), 0.0, 1.0)
    ease = 3 * s**2 - 2 * s**3
    position = HOME_POSE[:3] + ease[:, None] * (goal + [0.0, 0.0, 0.05] - HOME_POSE[:3])
    angle = np.linspace(0.25, -0.25, num_frames)
    quaternion = np.stack([np.zeros_like(angle), np.cos(angle), np.zeros_like(angle), np.sin(angle)], axis=1)
    # q and -q are one rotation; RLBench may report either, so some frames get the other sign.
    quaternion[2::3] *= -1.0
    poses = np.concatenate([position, quaternion], axis=1)
    joints = np.concatenate([poses[:, :3], np.sin(poses[:, 3:] + 0.3)], axis=1)
    gripper = np.ones(num_frames)
    if close_at is not None:
        gripper[close_at:] = 0.0
    return poses, joints, gripper


def write_episode(
    episode_dir: Path,
    num_frames: int = 6,
    image_size: int = 16,
    cameras: Sequence[str] = RLBENCH_CAMERAS,
    seed: int = 0,
    close_at: int | None = None,
) -> SyntheticEpisode:
    """One episode folder with `low_dim_obs.pkl` and `<cam>_{rgb,depth,mask}/<i>.png` for every camera."""
    rng = np.random.default_rng(seed)
    goal = rng.uniform([0.0, -0.2, 0.8], [0.3, 0.2, 0.95])
    poses, joints, gripper = trajectory(num_frames, goal, close_at)
    velocities = np.gradient(joints, axis=0) * 20.0 if num_frames > 1 else np.zeros_like(joints)
    scene = FakeRLBenchScene(list(cameras), image_size)
    observations, depth = [], {cam: [] for cam in cameras}
    for t in range(num_frames):
        misc = {}
        for cam in cameras:
            view = scene.render(cam, poses[t, :3], goal)
            for kind, image in (
                ("rgb", view["rgb"]),
                ("depth", encode_depth(view["depth"], view["near"], view["far"])),
                ("mask", np.zeros_like(view["rgb"])),
            ):
                folder = episode_dir / f"{cam}_{kind}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(folder / f"{t}.png")
            depth[cam].append(view["depth"])
            misc[f"{cam}_camera_intrinsics"] = view["intrinsics"]
            misc[f"{cam}_camera_extrinsics"] = view["extrinsics"]
            misc[f"{cam}_camera_near"] = view["near"]
            misc[f"{cam}_camera_far"] = view["far"]
        attributes: dict[str, Any] = {
            f"{cam}_{kind}": None for cam in RLBENCH_CAMERAS for kind in ("rgb", "depth", "mask", "point_cloud")
        }
        attributes.update(
            joint_velocities=velocities[t],
            joint_positions=joints[t],
            joint_forces=np.zeros(7),
            gripper_open=float(gripper[t]),
            gripper_pose=poses[t],
            gripper_matrix=np.eye(4),
            gripper_joint_positions=np.full(2, 0.04 * gripper[t]),
            gripper_touch_forces=np.zeros(6),
            task_low_dim_state=goal,
            misc=misc,
        )
        observations.append(Observation(**attributes))
    with rlbench_modules(), open(episode_dir / "low_dim_obs.pkl", "wb") as f:
        pickle.dump(
            Demo(observations, random_seed=("MT19937", np.arange(4, dtype=np.uint32), 0, 0, 0.0)), f, protocol=3
        )
    return SyntheticEpisode(
        episode_dir, poses, joints, gripper, goal, {cam: np.stack(frames) for cam, frames in depth.items()}
    )


def write_pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=3)


def write_task(
    root: Path,
    task: str = "fake_reach",
    layout: str = "variation",
    episodes: int = 2,
    num_frames: int = 6,
    image_size: int = 16,
    cameras: Sequence[str] = RLBENCH_CAMERAS,
    variations: Sequence[int] = (0,),
    descriptions: Any = ("reach the red target", "touch the red cube"),
    close_at: int | None = None,
) -> tuple[Path, list[SyntheticEpisode]]:
    """A task folder in the `variation` layout (`variation<N>/episodes/episode<K>`, descriptions per
    variation) or the `all_variations` one (per-episode `variation_number.pkl` and descriptions, variations
    assigned round-robin). `descriptions=None` writes no descriptions file."""
    task_dir = root / task
    written = []
    for k in range(episodes):
        variation = variations[k % len(variations)]
        if layout == "variation":
            variation_dir = task_dir / f"variation{variation}"
            episode_dir = variation_dir / "episodes" / f"episode{k}"
        else:
            variation_dir = task_dir / "all_variations"
            episode_dir = variation_dir / "episodes" / f"episode{k}"
        episode_dir.mkdir(parents=True, exist_ok=True)
        written.append(write_episode(episode_dir, num_frames, image_size, cameras, seed=k, close_at=close_at))
        descriptions_dir = variation_dir if layout == "variation" else episode_dir
        if descriptions is not None:
            write_pickle(
                descriptions_dir / "variation_descriptions.pkl",
                list(descriptions) if isinstance(descriptions, tuple) else descriptions,
            )
        if layout != "variation":
            write_pickle(episode_dir / "variation_number.pkl", int(variation))
    return task_dir, written
