"""RLBench's saved demos, read without importing RLBench, PyRep or CoppeliaSim.

Input: a task folder in either layout RLBench's dataset generators write,
- `<task>/variation<N>/episodes/episode<K>/` (descriptions in `<task>/variation<N>/variation_descriptions.pkl`
  or in the episode folder), or
- `<task>/all_variations/episodes/episode<K>/` with per-episode `variation_number.pkl` and
  `variation_descriptions.pkl`,
where each episode folder holds `low_dim_obs.pkl` (a pickled `rlbench.demo.Demo` of
`rlbench.backend.observation.Observation`s with the images stripped) and `<camera>_{rgb,depth,mask}/<i>.png`.
The pickle is read by an unpickler that maps RLBench's two classes to the stand-ins below and refuses
any other class, so a foreign pickle fails with a clear error instead of running code.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lerobot.utils.constants import OBS_STATE
from PIL import Image, UnidentifiedImageError

from lerobot_flowstep.constants import depth_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.rlbench.conventions import canonical_quaternion, decode_depth, opencv_camera, proprio_state

LOW_DIM_PICKLE = "low_dim_obs.pkl"
VARIATION_NUMBER = "variation_number.pkl"
VARIATION_DESCRIPTIONS = "variation_descriptions.pkl"
ALL_VARIATIONS = "all_variations"


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


def read_misc(obs: Observation, key: str, shape: tuple[int, ...], episode: str, path: Path, index: int) -> np.ndarray:
    misc = getattr(obs, "misc", None)
    if not isinstance(misc, dict) or misc.get(key) is None:
        raise RLBenchDataError(episode, path, f"observation {index} has no misc['{key}']")
    array = np.asarray(misc[key], dtype=np.float64)
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise RLBenchDataError(episode, path, f"observation {index}: misc['{key}'] must be finite with shape {shape}")
    return array


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


def read_png(path: Path, episode: str) -> np.ndarray:
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
        return np.stack([read_misc(o, key, shape, episode.name, pickle_path, i) for i, o in enumerate(observations)])

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
        rgb[cam] = _same_shape([read_png(p, episode.name) for p in rgb_paths], episode, f"{cam}_rgb")
        depth[cam] = _same_shape(
            [decode_depth(read_png(p, episode.name), near[i], far[i]) for i, p in enumerate(depth_paths)],
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
