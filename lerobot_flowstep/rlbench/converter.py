"""RLBench demonstrations -> LeRobotDataset v3, without importing RLBench, PyRep or CoppeliaSim.

Input: a task folder in either layout RLBench's dataset generators write,
- `<task>/variation<N>/episodes/episode<K>/` (descriptions in `<task>/variation<N>/variation_descriptions.pkl`
  or in the episode folder), or
- `<task>/all_variations/episodes/episode<K>/` with per-episode `variation_number.pkl` and
  `variation_descriptions.pkl`,
where each episode folder holds `low_dim_obs.pkl` (a pickled `rlbench.demo.Demo` of
`rlbench.backend.observation.Observation`s with the images stripped) and `<camera>_{rgb,depth,mask}/<i>.png`.
The pickle is read by an unpickler that maps RLBench's two classes to the stand-ins below and refuses
any other class, so a foreign pickle fails with a clear error instead of running code.

Output columns (frame t):
- `observation.images.<cam>` (H, W, 3) image, stored losslessly as PNG;
- `observation.depth.<cam>` (1, H, W) float32 metres (camera-frame z), decoded from RLBench's 24-bit
  RGB-packed depth PNG with that frame's near/far planes;
- `observation.camera.<cam>.intrinsics` (3, 3) / `.extrinsics` (4, 4) float32, per frame, rewritten from
  RLBench's convention (negative focal lengths) to the plugin's OpenCV one (`geometry.flip_negative_focal`);
- `observation.state` (15,): 7 joint positions, gripper open (0/1), gripper position (3) and quaternion
  (qx, qy, qz, qw);
- `action` (8,): the next frame's gripper pose + gripper open (`ee_pose`), or its joint positions + gripper
  open (`joint_positions`); the last frame's action repeats its own state (hold still). With
  `keyframes_only`, an episode keeps only the frame before each keypoint and its action is the keypoint;
- optional `observation.pointcloud` (N, 3 or 6) float32, world frame, computed by `geometry.fuse_pointcloud`
  exactly as the policy's point-cloud processor step would;
- `rlbench_variation`, `rlbench_frame_index`, `rlbench_target_index` (int64): the variation, the raw frame
  the row comes from and the raw frame its action targets. Not under `observation.`/`action`, so policies
  never see them.

Quaternions are sign-canonicalised (q and -q are the same rotation) to the hemisphere of the gripper's
home orientation, pointing down: a fixed rule, so the env wrapper applies the same one at evaluation time,
and unlike "w >= 0" it does not flip back and forth around the gripper-down pose, where w is near 0.
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lerobot.utils.constants import ACTION, OBS_STATE
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.core.geometry import depth_to_world_points, flip_negative_focal, project_points
from lerobot_flowstep.datasets.atomic import atomic_lerobot_dataset, check_destination
from lerobot_flowstep.processor.pointcloud import PointCloudConfig

RLBENCH_CAMERAS = ("front", "left_shoulder", "right_shoulder", "overhead", "wrist")
FPS = 20
# RLBench's `DEPTH_SCALE`: depth PNGs pack the normalised depth as a 24-bit integer (R high, B low byte).
DEPTH_SCALE = 2**24 - 1
LOW_DIM_PICKLE = "low_dim_obs.pkl"
VARIATION_NUMBER = "variation_number.pkl"
VARIATION_DESCRIPTIONS = "variation_descriptions.pkl"
ALL_VARIATIONS = "all_variations"
# The gripper's home orientation (pointing down), (qx, qy, qz, qw): the reference hemisphere.
GRIPPER_DOWN_QUATERNION = np.array([0.0, 1.0, 0.0, 0.0])
# PerAct's scene bounds, the usual RLBench workspace: x, y, z low / high in metres.
DEFAULT_BOUNDS_LOW = (-0.3, -0.5, 0.6)
DEFAULT_BOUNDS_HIGH = (0.7, 0.5, 1.6)

ActionMode = Literal["ee_pose", "joint_positions"]
ACTION_MODES: tuple[str, ...] = ("ee_pose", "joint_positions")
STATE_NAMES = [f"joint_{i}" for i in range(7)] + ["gripper_open", "x", "y", "z", "qx", "qy", "qz", "qw"]
ACTION_NAMES: dict[str, list[str]] = {
    "ee_pose": ["x", "y", "z", "qx", "qy", "qz", "qw", "gripper_open"],
    "joint_positions": [f"joint_{i}" for i in range(7)] + ["gripper_open"],
}
VARIATION_COLUMN = "rlbench_variation"
FRAME_COLUMN = "rlbench_frame_index"
TARGET_COLUMN = "rlbench_target_index"


class RLBenchDataError(ValueError):
    """Bad RLBench input, naming the episode and the file at fault."""

    def __init__(self, episode: str, path: Path | str | None, problem: str) -> None:
        self.episode = episode
        self.path = None if path is None else Path(path)
        self.problem = problem
        where = f" ({self.path})" if self.path is not None else ""
        super().__init__(f"episode {episode}{where}: {problem}")


# --- reading the pickles ----------------------------------------------------------------------------


class Observation:
    """Stand-in for `rlbench.backend.observation.Observation`: holds whatever attributes were pickled."""

    def __setstate__(self, state: Any) -> None:
        # Protocol-2 pickles of classes with __slots__ send (dict_state, slot_state); RLBench's do not.
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"Observation state is a {type(state).__name__}, not a dict")
        self.__dict__.update(state)


class Demo:
    """Stand-in for `rlbench.demo.Demo`: a sequence of observations (`_observations`) and a random seed."""

    _observations: list

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"Demo state is a {type(state).__name__}, not a dict")
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.__dict__.get("_observations", []))

    def __getitem__(self, index: int) -> Observation:
        return self._observations[index]


_STAND_INS = {
    ("rlbench.backend.observation", "Observation"): Observation,
    ("rlbench.demo", "Demo"): Demo,
}
_NUMPY_NAMES = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
_SAFE_GLOBALS = {
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
}


def _numpy_core_module(module: str) -> str:
    """Pickles name `numpy.core.*` (numpy < 2) or `numpy._core.*` (numpy >= 2); load whichever exists here."""
    parts = module.split(".")
    if parts[:2] not in (["numpy", "core"], ["numpy", "_core"]):
        return module
    # numpy 2's own name first: its `numpy.core` alias still works but warns.
    for prefix in ("numpy._core", "numpy.core"):
        candidate = ".".join([prefix, *parts[2:]])
        try:
            importlib.import_module(candidate)
        except ImportError:
            continue
        return candidate
    return module


class RLBenchUnpickler(pickle.Unpickler):
    """Unpickles RLBench demo files onto the stand-ins; any other class is refused (foreign pickle).

    `max_bytes` (the file's size) bounds what the pickle may ask to allocate: a real demo's data is in the
    file, so a request for a larger buffer is a corrupt or hostile file, refused before it exhausts memory.
    """

    def __init__(self, file: Any, max_bytes: int | None = None) -> None:
        super().__init__(file)
        self.max_bytes = max_bytes
        self._requested = 0

    def _bytearray(self, *args: Any) -> bytearray:
        if args and isinstance(args[0], int) and self.max_bytes is not None:
            # Counted over the whole file, so that many small requests cannot add up either.
            self._requested += args[0]
            if self._requested > self.max_bytes:
                raise pickle.UnpicklingError(
                    f"asks for a bytearray of {args[0]:,} bytes, more than the whole file ({self.max_bytes:,} bytes) "
                    "holds"
                )
        return bytearray(*args)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "bytearray"):
            return self._bytearray
        if (module, name) in _STAND_INS:
            return _STAND_INS[(module, name)]
        if module.split(".")[0] in ("rlbench", "pyrep"):
            raise pickle.UnpicklingError(
                f"references {module}.{name}, which this converter does not read (it reads single-arm "
                "RLBench demos: rlbench.demo.Demo of rlbench.backend.observation.Observation)"
            )
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                      "numpy._core.numeric") and name in _NUMPY_NAMES:  # fmt: skip
            return super().find_class(_numpy_core_module(module), name)
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"references {module}.{name}, which is not part of an RLBench demo")


def _unpickle(path: Path, episode: str) -> Any:
    if not path.is_file():
        raise RLBenchDataError(episode, path, f"{path.name} is missing")
    try:
        with open(path, "rb") as f:
            return RLBenchUnpickler(f, max_bytes=os.fstat(f.fileno()).st_size).load()
    except KeyboardInterrupt:
        raise
    except MemoryError as err:
        raise RLBenchDataError(
            episode, path, f"{path.name} asks for more memory than this machine has: a corrupt or hostile pickle"
        ) from err
    except Exception as err:  # noqa: BLE001 - any failure of a bad pickle is reported the same way
        raise RLBenchDataError(
            episode, path, f"{path.name} is truncated or not an RLBench pickle: {type(err).__name__}: {err}"
        ) from err


def load_observations(path: Path, episode: str = "?") -> list[Observation]:
    """The observations of a `low_dim_obs.pkl` (a pickled Demo, or a plain list of observations)."""
    path = Path(path)
    obj = _unpickle(path, episode)
    if isinstance(obj, Demo):
        observations = obj.__dict__.get("_observations")
    elif isinstance(obj, list | tuple):
        observations = obj
    else:
        raise RLBenchDataError(episode, path, f"holds a {type(obj).__name__}, not an RLBench Demo")
    if not isinstance(observations, list | tuple) or not observations:
        raise RLBenchDataError(episode, path, "the Demo holds no observations")
    for index, obs in enumerate(observations):
        if not isinstance(obs, Observation):
            raise RLBenchDataError(episode, path, f"item {index} is a {type(obs).__name__}, not an Observation")
    return list(observations)


def _vector(obs: Observation, name: str, size: int, episode: str, path: Path, index: int) -> np.ndarray:
    value = getattr(obs, name, None)
    if value is None:
        raise RLBenchDataError(episode, path, f"observation {index} has no '{name}' (saved without it?)")
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.shape != (size,) or not np.all(np.isfinite(array)):
        raise RLBenchDataError(episode, path, f"observation {index}: '{name}' must hold {size} finite numbers")
    return array


def _misc(obs: Observation, key: str, shape: tuple[int, ...], episode: str, path: Path, index: int) -> np.ndarray:
    misc = getattr(obs, "misc", None)
    if not isinstance(misc, dict) or misc.get(key) is None:
        raise RLBenchDataError(episode, path, f"observation {index} has no misc['{key}']")
    array = np.asarray(misc[key], dtype=np.float64)
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise RLBenchDataError(episode, path, f"observation {index}: misc['{key}'] must be finite with shape {shape}")
    return array


# --- geometry and low-dimensional conventions ------------------------------------------------------


def decode_depth(packed_rgb: np.ndarray, near: float, far: float) -> np.ndarray:
    """Metric depth (H, W) float32 from RLBench's RGB-packed depth PNG (H, W, 3) uint8.

    RLBench stores (depth - near) / (far - near) as a 24-bit integer, R the high byte; this inverts
    `image_to_float_array(rgb, 2**24 - 1)` followed by `near + d * (far - near)`, in float64 until the end.
    """
    packed = packed_rgb.astype(np.int64)
    normalized = (packed[..., 0] * 65536 + packed[..., 1] * 256 + packed[..., 2]) / DEPTH_SCALE
    return (near + normalized * (far - near)).astype(np.float32)


def opencv_camera(intrinsics: np.ndarray, extrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RLBench camera parameters (negative focal lengths, camera-to-world) in the OpenCV convention, float64.

    The same rays result: `geometry.flip_negative_focal` negates each negative focal length together with
    the matching camera axis.
    """
    k, t = flip_negative_focal(
        torch.as_tensor(intrinsics, dtype=torch.float64), torch.as_tensor(extrinsics, dtype=torch.float64)
    )
    return k.numpy(), t.numpy()


def canonical_quaternion(quaternion: np.ndarray) -> np.ndarray:
    """The sign of (..., 4) quaternions (qx, qy, qz, qw) in the hemisphere of the gripper-down pose."""
    quaternion = np.asarray(quaternion, dtype=np.float64)
    sign = np.where(quaternion @ GRIPPER_DOWN_QUATERNION < 0.0, -1.0, 1.0)
    return quaternion * sign[..., None]


def proprio_state(joint_positions: np.ndarray, gripper_open: float, gripper_pose: np.ndarray) -> np.ndarray:
    """`observation.state` (15,) float32: joints (7), gripper open, position (3), canonical quaternion (4)."""
    pose = np.asarray(gripper_pose, dtype=np.float64)
    return np.concatenate(
        [np.asarray(joint_positions, dtype=np.float64), [float(gripper_open)], pose[:3], canonical_quaternion(pose[3:])]
    ).astype(np.float32)


def keypoint_discovery(
    gripper_open: Sequence[float], joint_velocities: Sequence[np.ndarray], delta: float = 0.1
) -> list[int]:
    """Keyframe indices by the usual RLBench rule (ARM/PerAct `_keypoint_discovery`).

    A frame is a keypoint when the gripper opens or closes, when the arm comes to rest (all joint
    velocities within `delta`, the gripper steady around it, at most every 4 frames), and at the end; of
    two consecutive final keypoints only the last is kept. The rule's negative-index look-backs at the
    first frames are kept as they are, so the keypoints match other implementations exactly.
    """
    n = len(gripper_open)
    keypoints: list[int] = []
    previous_open = gripper_open[0]
    stopped_buffer = 0
    for i in range(n):
        next_is_not_final = i == n - 2
        gripper_steady = i < n - 2 and (
            gripper_open[i] == gripper_open[i + 1]
            and gripper_open[i] == gripper_open[i - 1]
            and gripper_open[i - 2] == gripper_open[i - 1]
        )
        small_velocity = bool(np.allclose(joint_velocities[i], 0.0, atol=delta))
        stopped = stopped_buffer <= 0 and small_velocity and not next_is_not_final and gripper_steady
        stopped_buffer = 4 if stopped else stopped_buffer - 1
        last = i == n - 1
        if i != 0 and (gripper_open[i] != previous_open or last or stopped):
            keypoints.append(i)
        previous_open = gripper_open[i]
    if len(keypoints) > 1 and keypoints[-1] - 1 == keypoints[-2]:
        keypoints.pop(-2)
    return keypoints


def rlbench_pointcloud_config(
    cameras: Sequence[str] = RLBENCH_CAMERAS,
    num_points: int = 1024,
    use_rgb: bool = False,
    bounds_low: Sequence[float] = DEFAULT_BOUNDS_LOW,
    bounds_high: Sequence[float] = DEFAULT_BOUNDS_HIGH,
    **kwargs: Any,
) -> PointCloudConfig:
    """The point-cloud settings of the RLBench configs: the policy's own `PointCloudConfig`, so that a stored
    cloud and the processor step's cloud are made by the same function with the same settings."""
    return PointCloudConfig(
        cameras=list(cameras),
        num_points=num_points,
        use_rgb=use_rgb,
        bounds_low=list(bounds_low),
        bounds_high=list(bounds_high),
        **kwargs,
    )


def fused_pointclouds(
    depths: Sequence[np.ndarray],
    intrinsics: Sequence[np.ndarray],
    extrinsics: Sequence[np.ndarray],
    pointcloud: PointCloudConfig,
    colors: Sequence[np.ndarray] | None = None,
    empty_fill: Sequence[float] | None = None,
) -> np.ndarray:
    """(T, num_points, 3 or 6) float32 clouds from per-camera depths (T, H, W) metres, OpenCV intrinsics
    (T, 3, 3), camera-to-world extrinsics (T, 4, 4) and optional colours (T, H, W, 3) uint8: numpy in and out
    around `PointCloudConfig.fuse`, the processor step's own function. A frame with no point inside the
    bounds raises, unless `empty_fill` is given (see `geometry.fuse_pointcloud`)."""

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    clouds = pointcloud.fuse(
        [tensor(d) for d in depths],
        [tensor(k) for k in intrinsics],
        [tensor(t) for t in extrinsics],
        colors=[tensor(c).permute(0, 3, 1, 2) / 255.0 for c in colors] if colors is not None else None,
        empty_fill=empty_fill,
    )
    return clouds.numpy().astype(np.float32, copy=False)


# --- episodes on disk --------------------------------------------------------------------------------

_VARIATION_DIR = re.compile(r"^variation(\d+)$")
_EPISODE_DIR = re.compile(r"^episode(\d+)$")


@dataclass(frozen=True)
class RLBenchEpisode:
    """One saved demo: `<task>/<variation_dir>/episodes/episode<K>`."""

    task: str
    path: Path
    variation_dir: Path

    @property
    def name(self) -> str:
        return f"{self.task}/{self.variation_dir.name}/episodes/{self.path.name}"

    @property
    def folder_variation(self) -> int | None:
        match = _VARIATION_DIR.match(self.variation_dir.name)
        return int(match.group(1)) if match else None


def discover_episodes(source: Path, variations: Iterable[int] | None = None) -> tuple[str, list[RLBenchEpisode]]:
    """The task name and its episodes under `source`, a task folder (or one of its variation folders).

    Episodes are sorted by variation, then episode number (natural order: episode10 after episode9).
    `variations` keeps only those folder variations (`all_variations` episodes are filtered after their
    `variation_number.pkl` is read, in `convert_rlbench`).
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"RLBench source folder not found: {source}")
    if _VARIATION_DIR.match(source.name) or source.name == ALL_VARIATIONS:
        task_dir, variation_dirs = source.parent, [source]
    else:
        task_dir = source
        variation_dirs = [
            p for p in source.iterdir() if p.is_dir() and (_VARIATION_DIR.match(p.name) or p.name == ALL_VARIATIONS)
        ]
    wanted = None if variations is None else set(variations)

    def order(path: Path) -> tuple[int, int]:
        match = _VARIATION_DIR.match(path.name)
        return (int(match.group(1)), 0) if match else (-1, 0)

    episodes = []
    for variation_dir in sorted(variation_dirs, key=order):
        match = _VARIATION_DIR.match(variation_dir.name)
        if match and wanted is not None and int(match.group(1)) not in wanted:
            continue
        episodes_dir = variation_dir / "episodes"
        if not episodes_dir.is_dir():
            continue
        found = [p for p in episodes_dir.iterdir() if p.is_dir() and _EPISODE_DIR.match(p.name)]
        found.sort(key=lambda p: int(_EPISODE_DIR.match(p.name).group(1)))  # type: ignore[union-attr]
        episodes += [RLBenchEpisode(task_dir.name, p, variation_dir) for p in found]
    if not episodes:
        raise FileNotFoundError(
            f"no RLBench episodes under {source}: expected <task>/variation<N>/episodes/episode<K>/ or "
            f"<task>/{ALL_VARIATIONS}/episodes/episode<K>/ folders"
            + (f" (variations {sorted(wanted)})" if wanted is not None else "")
        )
    return task_dir.name, episodes


def read_variation_number(episode: RLBenchEpisode) -> tuple[int, str | None]:
    """The episode's variation and, when it could not be read, a note why (-1 then)."""
    path = episode.path / VARIATION_NUMBER
    if path.is_file():
        try:
            value = _unpickle(path, episode.name)
        except RLBenchDataError as err:
            return (episode.folder_variation if episode.folder_variation is not None else -1), err.problem
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            return int(value), None
        note = f"{VARIATION_NUMBER} holds a {type(value).__name__}, not an int"
        return (episode.folder_variation if episode.folder_variation is not None else -1), note
    if episode.folder_variation is not None:
        return episode.folder_variation, None
    return -1, f"{VARIATION_NUMBER} is missing"


def read_task_description(episode: RLBenchEpisode) -> tuple[str, str | None]:
    """The first variation description, or the task name (underscores as spaces) and a note why.

    Real datasets lack the file in some variation folders and hold other objects in it in others.
    """
    fallback = episode.task.replace("_", " ")
    candidates = [episode.path / VARIATION_DESCRIPTIONS, episode.variation_dir / VARIATION_DESCRIPTIONS]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return fallback, f"{VARIATION_DESCRIPTIONS} missing, task text is '{fallback}'"
    try:
        value = _unpickle(path, episode.name)
    except RLBenchDataError as err:
        return fallback, f"{err.problem}; task text is '{fallback}'"
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value) and value[0].strip():
        return value[0].strip(), None
    return fallback, f"{path.name} is not a list of strings ({type(value).__name__}), task text is '{fallback}'"


def _read_png(path: Path, episode: str) -> np.ndarray:
    if not path.is_file():
        raise RLBenchDataError(episode, path, f"{path.parent.name}/{path.name} is missing")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RLBenchDataError(episode, path, f"unreadable PNG: {err}") from err


def _png_folder(episode: RLBenchEpisode, folder: str, num_frames: int) -> list[Path]:
    """The `<folder>/<i>.png` paths of every frame, after checking the folder agrees with the pickle."""
    directory = episode.path / folder
    if not directory.is_dir():
        raise RLBenchDataError(episode.name, directory, f"folder {folder}/ is missing")
    present = {p.name for p in directory.iterdir() if p.suffix.lower() == ".png"}
    expected = [f"{i}.png" for i in range(num_frames)]
    missing = [name for name in expected if name not in present]
    if len(present) != num_frames:
        detail = f" (missing {folder}/{missing[0]})" if missing else ""
        raise RLBenchDataError(
            episode.name,
            directory / missing[0] if missing else directory,
            f"{folder}/ holds {len(present)} PNG frames but {LOW_DIM_PICKLE} holds {num_frames} observations" + detail,
        )
    if missing:
        raise RLBenchDataError(episode.name, directory / missing[0], f"{folder}/{missing[0]} is missing")
    return [directory / name for name in expected]


@dataclass
class EpisodeArrays:
    """Every frame of one episode, decoded."""

    rgb: dict[str, np.ndarray]  # cam -> (T, H, W, 3) uint8
    depth: dict[str, np.ndarray]  # cam -> (T, H, W) float32 metres
    intrinsics: dict[str, np.ndarray]  # cam -> (T, 3, 3) float64, OpenCV
    extrinsics: dict[str, np.ndarray]  # cam -> (T, 4, 4) float64, camera-to-world, OpenCV axes
    joint_positions: np.ndarray  # (T, 7)
    joint_velocities: np.ndarray  # (T, 7)
    gripper_open: np.ndarray  # (T,)
    gripper_pose: np.ndarray  # (T, 7) raw

    @property
    def num_frames(self) -> int:
        return len(self.gripper_open)

    def state(self) -> np.ndarray:
        return np.stack(
            [
                proprio_state(self.joint_positions[t], self.gripper_open[t], self.gripper_pose[t])
                for t in range(self.num_frames)
            ]
        )

    def observation(self, t: int, cameras: Sequence[str]) -> dict[str, torch.Tensor]:
        """Frame t as `lerobot-eval` hands it to the policy's preprocessor (a batch of one, float32, RGB in
        [0, 1] channels first): state, and RGB, depth and camera parameters of `cameras`."""
        state = proprio_state(self.joint_positions[t], self.gripper_open[t], self.gripper_pose[t])
        frame = {OBS_STATE: torch.from_numpy(np.asarray(state)[None]).float()}
        for cam in cameras:
            frame[rgb_key(cam)] = torch.from_numpy(self.rgb[cam][t]).permute(2, 0, 1)[None].float() / 255.0
            frame[depth_key(cam)] = torch.from_numpy(self.depth[cam][t][None, None]).float()
            frame[intrinsics_key(cam)] = torch.from_numpy(self.intrinsics[cam][t][None]).float()
            frame[extrinsics_key(cam)] = torch.from_numpy(self.extrinsics[cam][t][None]).float()
        return frame

    def action_targets(self, mode: str) -> np.ndarray:
        """(T, 8) float32: what an action aiming at each raw frame's state commands."""
        gripper = self.gripper_open[:, None]
        if mode == "ee_pose":
            pose = self.gripper_pose
            return np.concatenate([pose[:, :3], canonical_quaternion(pose[:, 3:]), gripper], axis=1).astype(np.float32)
        return np.concatenate([self.joint_positions, gripper], axis=1).astype(np.float32)


def read_episode(episode: RLBenchEpisode, cameras: Sequence[str]) -> EpisodeArrays:
    """Decode one episode; raises RLBenchDataError naming the file for any inconsistency."""
    pickle_path = episode.path / LOW_DIM_PICKLE
    observations = load_observations(pickle_path, episode.name)
    num_frames = len(observations)

    def vectors(name: str, size: int) -> np.ndarray:
        return np.stack([_vector(o, name, size, episode.name, pickle_path, i) for i, o in enumerate(observations)])

    def misc(key: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([_misc(o, key, shape, episode.name, pickle_path, i) for i, o in enumerate(observations)])

    joints = vectors("joint_positions", 7)
    pose = vectors("gripper_pose", 7)
    gripper = vectors("gripper_open", 1)[:, 0]
    # Velocities only matter for keypoint discovery, and some generators drop them.
    if any(getattr(o, "joint_velocities", None) is None for o in observations):
        velocities = np.zeros_like(joints)
    else:
        velocities = vectors("joint_velocities", 7)
    norms = np.linalg.norm(pose[:, 3:], axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-3):
        bad = int(np.argmax(np.abs(norms - 1.0)))
        raise RLBenchDataError(
            episode.name, pickle_path, f"observation {bad}: gripper_pose quaternion has norm {norms[bad]:.4f}"
        )

    rgb, depth, intrinsics, extrinsics = {}, {}, {}, {}
    for cam in cameras:
        intrinsics[cam], extrinsics[cam] = opencv_camera(
            misc(f"{cam}_camera_intrinsics", (3, 3)), misc(f"{cam}_camera_extrinsics", (4, 4))
        )
        near, far = misc(f"{cam}_camera_near", ()), misc(f"{cam}_camera_far", ())
        rgb_paths = _png_folder(episode, f"{cam}_rgb", num_frames)
        depth_paths = _png_folder(episode, f"{cam}_depth", num_frames)
        rgb[cam] = _same_shape([_read_png(p, episode.name) for p in rgb_paths], episode, f"{cam}_rgb")
        depth[cam] = _same_shape(
            [decode_depth(_read_png(p, episode.name), near[i], far[i]) for i, p in enumerate(depth_paths)],
            episode,
            f"{cam}_depth",
        )
        if depth[cam].shape[1:] != rgb[cam].shape[1:3]:
            raise RLBenchDataError(
                episode.name,
                episode.path / f"{cam}_depth",
                f"{cam}_depth is {depth[cam].shape[1:]} but {cam}_rgb is {rgb[cam].shape[1:3]}",
            )
    return EpisodeArrays(rgb, depth, intrinsics, extrinsics, joints, velocities, gripper, pose)


def _same_shape(frames: list[np.ndarray], episode: RLBenchEpisode, folder: str) -> np.ndarray:
    shape = frames[0].shape
    for i, frame in enumerate(frames):
        if frame.shape != shape:
            raise RLBenchDataError(
                episode.name,
                episode.path / folder / f"{i}.png",
                f"{folder}/{i}.png is {frame.shape}, frame 0 is {shape}",
            )
    return np.stack(frames)


# --- conversion -------------------------------------------------------------------------------------


@dataclass
class ConversionSummary:
    """What `convert_rlbench` wrote and what it left out."""

    root: Path
    repo_id: str
    task: str
    episodes: int = 0
    frames: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def format(self) -> str:
        lines = [
            f"RLBench '{self.task}' -> {self.root} (repo_id {self.repo_id})",
            f"  episodes written: {self.episodes}, frames: {self.frames}, time: {self.seconds:.1f} s",
            f"  episodes skipped: {len(self.skipped)}",
        ]
        lines += [f"    - {name}: {reason}" for name, reason in self.skipped]
        if self.notes:
            lines.append(f"  notes ({len(self.notes)}):")
            lines += [f"    - {note}" for note in self.notes]
        return "\n".join(lines)


def rlbench_dataset_features(
    cameras: Sequence[str],
    image_shapes: dict[str, tuple[int, int]],
    action_mode: str,
    pointcloud: PointCloudConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """The LeRobot feature spec `convert_rlbench` writes."""
    features: dict[str, dict[str, Any]] = {
        OBS_STATE: {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": list(STATE_NAMES)},
        ACTION: {"dtype": "float32", "shape": (8,), "names": list(ACTION_NAMES[action_mode])},
        VARIATION_COLUMN: {"dtype": "int64", "shape": (1,), "names": None},
        FRAME_COLUMN: {"dtype": "int64", "shape": (1,), "names": None},
        TARGET_COLUMN: {"dtype": "int64", "shape": (1,), "names": None},
    }
    for cam in cameras:
        h, w = image_shapes[cam]
        features[rgb_key(cam)] = {"dtype": "image", "shape": (h, w, 3), "names": ["height", "width", "channels"]}
        # Plain float arrays rather than LeRobot's depth-video features: parquet keeps metric depth exact.
        features[depth_key(cam)] = {"dtype": "float32", "shape": (1, h, w), "names": ["channels", "height", "width"]}
        features[intrinsics_key(cam)] = {"dtype": "float32", "shape": (3, 3), "names": None}
        features[extrinsics_key(cam)] = {"dtype": "float32", "shape": (4, 4), "names": None}
    if pointcloud is not None:
        width = 6 if pointcloud.use_rgb else 3
        features[OBS_POINTCLOUD] = {"dtype": "float32", "shape": (pointcloud.num_points, width), "names": None}
    return features


def _rows(num_frames: int, keyframes: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Raw observation frames and the raw frames their actions aim at."""
    if keyframes is None:
        frames = np.arange(num_frames)
        return frames, np.minimum(frames + 1, num_frames - 1)
    targets = np.asarray(keyframes, dtype=np.int64)
    return np.concatenate([[0], targets[:-1]]), targets


def _check_cameras(cameras: Sequence[str], what: str) -> list[str]:
    cameras = list(cameras)
    if not cameras:
        raise ValueError(f"{what}: give at least one camera ({', '.join(RLBENCH_CAMERAS)})")
    unknown = [c for c in cameras if c not in RLBENCH_CAMERAS]
    if unknown:
        raise ValueError(f"{what}: unknown camera name(s) {unknown}; RLBench's cameras are {list(RLBENCH_CAMERAS)}")
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"{what}: camera names repeat: {cameras}")
    return cameras


def convert_rlbench(
    source: Path | str,
    output: Path | str,
    repo_id: str | None = None,
    cameras: Sequence[str] = RLBENCH_CAMERAS,
    action_mode: str = "ee_pose",
    keyframes_only: bool = False,
    pointcloud: PointCloudConfig | None = None,
    variations: Iterable[int] | None = None,
    max_episodes: int | None = None,
    skip_bad_episodes: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    image_writer_threads: int = 0,
) -> ConversionSummary:
    """Convert the RLBench demos of one task folder (`source`) into a LeRobotDataset at `output`.

    See the module docstring for the layouts read and the columns written. Load the result offline with
    `LeRobotDataset(repo_id, root=output)`; `repo_id` defaults to `local/rlbench_<task>`.

    Bad input (missing or unreadable PNG, PNG count disagreeing with the pickle, truncated or foreign
    pickle, missing attributes) raises RLBenchDataError naming the episode and file; with
    `skip_bad_episodes` such an episode is left out and listed in the summary instead. Unknown camera
    names raise ValueError; an existing `output` raises FileExistsError unless `overwrite`, and `overwrite`
    replaces only a dataset (see `datasets.atomic.check_destination`); an `output` that is or holds `source`
    raises ValueError. Nothing is
    written at `output` unless the whole conversion succeeds. `image_writer_threads` > 0 encodes the PNGs
    in background threads (LeRobot's image writer).
    """
    start = time.perf_counter()
    source, output = Path(source), Path(output)
    cameras = _check_cameras(cameras, "cameras")
    if action_mode not in ACTION_MODES:
        raise ValueError(f"action_mode must be one of {ACTION_MODES}, got '{action_mode}'")
    if pointcloud is not None:
        missing = [c for c in _check_cameras(pointcloud.cameras, "point-cloud cameras") if c not in cameras]
        if missing:
            raise ValueError(f"point-cloud cameras {missing} are not among the converted cameras {cameras}")
    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"max_episodes must be >= 1, got {max_episodes}")
    if image_writer_threads < 0:
        raise ValueError(f"image_writer_threads must be >= 0, got {image_writer_threads}")
    check_destination(output, overwrite, sources=[source])
    wanted = None if variations is None else set(variations)
    task, episodes = discover_episodes(source, wanted)
    repo_id = repo_id or f"local/rlbench_{task}"
    summary = ConversionSummary(root=output, repo_id=repo_id, task=task)

    selected = []
    for episode in episodes:
        variation, note = read_variation_number(episode)
        if wanted is None or variation in wanted:
            selected.append((episode, variation, note))
    if not selected:
        raise FileNotFoundError(f"no episode of {source} belongs to variations {sorted(wanted or [])}")

    def load(episode: RLBenchEpisode) -> EpisodeArrays | None:
        try:
            return read_episode(episode, cameras)
        except RLBenchDataError as err:
            if not skip_bad_episodes:
                raise
            summary.skipped.append((episode.name, err.problem))
            return None

    bar = tqdm(total=len(selected), desc=f"rlbench {task}", unit="episode", disable=not progress)
    queue = iter(selected)
    # The first readable episode fixes the image sizes of the feature spec, hence the dataset.
    first = None
    for episode, variation, note in queue:
        arrays = load(episode)
        bar.update()
        if arrays is not None:
            first = (episode, variation, note, arrays)
            break
    if first is None:
        bar.close()
        raise RLBenchDataError(selected[-1][0].name, None, f"no episode could be read; skipped: {summary.skipped}")
    shapes = {cam: tuple(first[3].rgb[cam].shape[1:3]) for cam in cameras}
    features = rlbench_dataset_features(cameras, shapes, action_mode, pointcloud)

    def convert(episode: RLBenchEpisode, variation: int, note: str | None, arrays: EpisodeArrays) -> None:
        for cam in cameras:
            if tuple(arrays.rgb[cam].shape[1:3]) != shapes[cam]:
                problem = f"{cam} images are {arrays.rgb[cam].shape[1:3]}, the first episode's are {shapes[cam]}"
                if not skip_bad_episodes:
                    raise RLBenchDataError(episode.name, episode.path / f"{cam}_rgb", problem)
                summary.skipped.append((episode.name, problem))
                return
        if note:
            summary.notes.append(f"{episode.name}: {note}")
        description, note = read_task_description(episode)
        if note:
            summary.notes.append(f"{episode.name}: {note}")
        written = _write_episode(
            dataset, arrays, cameras, action_mode, keyframes_only, pointcloud, variation, description
        )
        summary.episodes += 1
        summary.frames += written
        bar.set_postfix(frames=summary.frames)

    try:
        with atomic_lerobot_dataset(
            output,
            overwrite=overwrite,
            sources=[source],
            repo_id=repo_id,
            fps=FPS,
            features=features,
            robot_type="rlbench_panda",
            use_videos=False,
            image_writer_threads=image_writer_threads,
        ) as dataset:
            convert(*first)
            for episode, variation, note in queue:
                if max_episodes is not None and summary.episodes >= max_episodes:
                    break
                arrays = load(episode)
                bar.update()
                if arrays is not None:
                    convert(episode, variation, note, arrays)
            if summary.episodes == 0:
                raise RLBenchDataError(
                    selected[-1][0].name, None, f"no episode was converted; skipped: {summary.skipped}"
                )
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _write_episode(
    dataset: Any,
    arrays: EpisodeArrays,
    cameras: Sequence[str],
    action_mode: str,
    keyframes_only: bool,
    pointcloud: PointCloudConfig | None,
    variation: int,
    description: str,
) -> int:
    keyframes = keypoint_discovery(list(arrays.gripper_open), list(arrays.joint_velocities)) if keyframes_only else None
    if keyframes is not None and not keyframes:
        # A one-frame demo has no keypoint; the frame itself is the only target.
        keyframes = [0]
    frames, targets = _rows(arrays.num_frames, keyframes)
    state = arrays.state()
    actions = arrays.action_targets(action_mode)
    clouds = None
    if pointcloud is not None:
        clouds = fused_pointclouds(
            [arrays.depth[c][frames] for c in pointcloud.cameras],
            [arrays.intrinsics[c][frames] for c in pointcloud.cameras],
            [arrays.extrinsics[c][frames] for c in pointcloud.cameras],
            pointcloud,
            colors=[arrays.rgb[c][frames] for c in pointcloud.cameras] if pointcloud.use_rgb else None,
        )
    for row, (t, target) in enumerate(zip(frames, targets, strict=True)):
        frame: dict[str, Any] = {
            OBS_STATE: state[t],
            ACTION: actions[target],
            VARIATION_COLUMN: np.array([variation], dtype=np.int64),
            FRAME_COLUMN: np.array([t], dtype=np.int64),
            TARGET_COLUMN: np.array([target], dtype=np.int64),
            "task": description,
        }
        for cam in cameras:
            frame[rgb_key(cam)] = arrays.rgb[cam][t]
            frame[depth_key(cam)] = arrays.depth[cam][t][None]
            frame[intrinsics_key(cam)] = arrays.intrinsics[cam][t].astype(np.float32)
            frame[extrinsics_key(cam)] = arrays.extrinsics[cam][t].astype(np.float32)
        if clouds is not None:
            frame[OBS_POINTCLOUD] = clouds[row]
        dataset.add_frame(frame)
    dataset.save_episode()
    return len(frames)


# --- geometry check -----------------------------------------------------------------------------------


@dataclass
class GeometryReport:
    """Whether an episode's cameras agree on the scene (see `check_rlbench_geometry`)."""

    episode: str
    frame: int
    table_height: dict[str, float | None]  # cam -> fitted plane height (m), None if the table is not seen
    table_tilt_deg: dict[str, float | None]  # cam -> angle between the fitted normal and +z
    overlap_median: dict[tuple[str, str], float]  # (a, b) -> median distance (m) of a's points to b's cloud
    height_tolerance: float = 0.005
    tilt_tolerance_deg: float = 1.0
    overlap_tolerance: float = 0.01

    @property
    def height_spread(self) -> float:
        heights = [h for h in self.table_height.values() if h is not None]
        return max(heights) - min(heights) if heights else math.inf

    @property
    def passed(self) -> bool:
        tilts = [t for t in self.table_tilt_deg.values() if t is not None]
        return (
            len(tilts) >= 2
            and self.height_spread <= self.height_tolerance
            and max(tilts) <= self.tilt_tolerance_deg
            and all(d <= self.overlap_tolerance for d in self.overlap_median.values())
        )

    def format(self) -> str:
        lines = [f"geometry check of {self.episode}, frame {self.frame}: {'PASS' if self.passed else 'FAIL'}"]
        for cam, height in self.table_height.items():
            tilt = self.table_tilt_deg[cam]
            lines.append(
                f"  table plane seen by {cam:<15} "
                + ("not found" if height is None else f"z = {height:.4f} m, tilt {tilt:.2f} deg")
            )
        lines.append(
            f"  table height spread: {self.height_spread * 1000:.2f} mm (tolerance {self.height_tolerance * 1000:.0f})"
        )
        for (a, b), distance in self.overlap_median.items():
            lines.append(f"  {a} -> {b}: median distance to the other cloud {distance * 1000:.2f} mm")
        return "\n".join(lines)


def _table_plane(points: np.ndarray) -> tuple[float, float] | None:
    """Height and tilt (deg) of the dominant horizontal surface among points (N, 3), or None."""
    if len(points) < 200:
        return None
    z = points[:, 2]
    bins = np.arange(z.min(), z.max() + 0.002, 0.002)
    if len(bins) < 2:
        bins = np.array([z.min() - 0.001, z.max() + 0.001])
    counts, edges = np.histogram(z, bins=bins)
    peak = 0.5 * (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1])
    inliers = points[np.abs(z - peak) < 0.006]
    if len(inliers) < 100:
        return None
    centred = inliers - inliers.mean(axis=0)
    normal = np.linalg.svd(centred, full_matrices=False)[2][-1]
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    return float(inliers[:, 2].mean()), tilt


def check_rlbench_geometry(
    episode_dir: Path | str,
    cameras: Sequence[str] = RLBENCH_CAMERAS,
    frame: int = 0,
    bounds_low: Sequence[float] = DEFAULT_BOUNDS_LOW,
    bounds_high: Sequence[float] = (0.7, 0.5, 1.2),
    max_points: int = 4000,
) -> GeometryReport:
    """Back-project one frame of every camera to the world frame and check that they describe one scene.

    - Table plane: in each camera's cloud (cropped to the workspace box), the dominant horizontal surface
      is fitted; every camera must find it at the same height (spread <= 5 mm) and level (tilt <= 1 deg).
    - Overlap: for each camera pair (a, b), a's workspace points that fall inside b's image are matched to
      their nearest neighbour in b's cloud; the median distance must be <= 1 cm (a pixel at 1.5 m is ~8 mm).
      Occlusions only affect the tail, hence the median.
    """
    episode_dir = Path(episode_dir)
    cameras = _check_cameras(cameras, "cameras")
    episode = RLBenchEpisode(episode_dir.parents[2].name, episode_dir, episode_dir.parents[1])
    pickle_path = episode_dir / LOW_DIM_PICKLE
    observations = load_observations(pickle_path, episode.name)
    if not 0 <= frame < len(observations):
        raise ValueError(f"frame {frame} is outside the episode's {len(observations)} frames")
    obs = observations[frame]
    low = torch.as_tensor(bounds_low, dtype=torch.float64)
    high = torch.as_tensor(bounds_high, dtype=torch.float64)
    clouds, params, depths = {}, {}, {}
    for cam in cameras:
        k, t = opencv_camera(
            _misc(obs, f"{cam}_camera_intrinsics", (3, 3), episode.name, pickle_path, frame),
            _misc(obs, f"{cam}_camera_extrinsics", (4, 4), episode.name, pickle_path, frame),
        )
        near = float(_misc(obs, f"{cam}_camera_near", (), episode.name, pickle_path, frame))
        far = float(_misc(obs, f"{cam}_camera_far", (), episode.name, pickle_path, frame))
        depth = decode_depth(_read_png(episode_dir / f"{cam}_depth" / f"{frame}.png", episode.name), near, far)
        k_t, t_t = torch.from_numpy(k), torch.from_numpy(t)
        points, valid = depth_to_world_points(torch.from_numpy(depth.astype(np.float64)), k_t, t_t)
        inside = valid & ((points >= low) & (points <= high)).all(-1)
        clouds[cam] = points[inside]
        params[cam] = (k_t, t_t)
        depths[cam] = depth

    heights, tilts = {}, {}
    for cam in cameras:
        plane = _table_plane(clouds[cam].numpy())
        heights[cam], tilts[cam] = (None, None) if plane is None else plane

    overlap = {}
    for a in cameras:
        stride = max(1, len(clouds[a]) // max_points)
        sample = clouds[a][::stride]
        for b in cameras:
            if a == b or len(clouds[b]) == 0 or len(sample) == 0:
                continue
            k_b, t_b = params[b]
            pixels, z = project_points(sample, k_b, t_b)
            h, w = depths[b].shape
            seen = (z > 0) & (pixels[:, 0] >= -0.5) & (pixels[:, 0] < w - 0.5) & (pixels[:, 1] >= -0.5)
            seen &= pixels[:, 1] < h - 0.5
            if int(seen.sum()) < 50:
                continue
            distances = torch.cat(
                [torch.cdist(chunk, clouds[b]).min(dim=1).values for chunk in sample[seen].split(1024)]
            )
            overlap[(a, b)] = float(distances.median())
    return GeometryReport(episode.name, frame, heights, tilts, overlap)
