"""Diffusion Policy's zarr replay buffers (and DP3's, same layout) -> LeRobotDataset v3.

A replay buffer is a zarr group with per-frame arrays `data/<name>` of equal length N (all episodes
concatenated) and `meta/episode_ends` (E,) int, the exclusive end frame of each episode. Which arrays
become which LeRobot features is a list of `ArrayMapping`s, either from a preset (`MAPPING_PRESETS`)
or given as `data/<array>[start:stop]=<lerobot key>`; the optional slice takes columns of the last axis.

The LeRobot key decides how an array is stored:
- `observation.image`, `observation.images.<cam>`: (H, W, 3) images (lossless PNG, or video with
  `video=True`), from (N, H, W, 3) or (N, 3, H, W) uint8, or floats in [0, 255] as DP stores them;
- `observation.depth.<cam>`: (1, H, W) float32, from (N, H, W), (N, H, W, 1) or (N, 1, H, W), units kept;
- `observation.pointcloud`: (P, 3) xyz or (P, 6) xyz + rgb float32, colours rescaled to [0, 1] when
  the source stores them in [0, 255] (the plugin's convention, see `lerobot_flowstep.constants`);
- anything else: the array's per-frame values, float32 for `observation.*` and `action` (a scalar
  per frame becomes shape (1,)), int64 / bool / float32 by source kind for other keys.

PushT (`pusht_cchi_v7_replay.zarr`, `data/state` = agent x, y, block x, y, angle) gets the keys of
LeRobot's `pusht` env: `observation.image`, `observation.state` (agent x, y), `action`, and for the
keypoint preset `observation.environment_state`, gym-pusht's 8 T-block corners computed from the
block pose by `pusht_environment_state`. The zarr's own `data/keypoint` (9, 2) is a different set:
9 points fixed in the block frame (Diffusion Policy's sampled keypoints), placed by the same pose
transform, so both are rigid functions of `state[2:5]`.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lerobot.utils.constants import ACTION, DEFAULT_FEATURES, OBS_ENV_STATE, OBS_IMAGE, OBS_IMAGES, OBS_STATE
from tqdm import tqdm

from lerobot_flowstep.constants import OBS_POINTCLOUD, is_depth_key
from lerobot_flowstep.datasets.atomic import atomic_lerobot_dataset, check_destination
from lerobot_flowstep.datasets.finite import first_nonfinite

EPISODE_ENDS = "meta/episode_ends"
PUSHT_TASK = "Push the T-shaped block onto the T-shaped target."
PUSHT_FPS = 10

# gym-pusht's T block (`PushTEnv.add_tee`, scale 30) in its body frame, in the order its
# `get_keypoints` returns them: pymunk stores each rectangle as a convex hull, which reorders the
# vertices `add_tee` lists, so this is the hull order of the bar then of the stem.
PUSHT_T_KEYPOINTS = np.array(
    [[-60, 0], [60, 0], [60, 30], [-60, 30], [-15, 30], [15, 30], [15, 120], [-15, 120]], dtype=np.float64
)

# Keys LeRobot fills itself; a mapping onto one would clash with them.
_RESERVED_KEYS = frozenset(DEFAULT_FEATURES) | {"task"}
_SPEC_PATTERN = re.compile(r"^(?P<source>[^\[\]=\s]+?)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?=(?P<key>[\w.\-]+)$")

FeatureKind = Literal["image", "depth", "pointcloud", "vector"]

# LeRobot's default video codec (SVT-AV1) kills the process with SIGFPE on frames under about 26 pixels a
# side, which no exception handler (hence no cleanup) survives: refuse such videos up front.
MIN_VIDEO_SIZE = 32


class ZarrFormatError(ValueError):
    """The zarr store, or a mapping onto it, does not fit the replay-buffer layout."""


def pusht_environment_state(block_pose: np.ndarray) -> np.ndarray:
    """gym-pusht's `environment_state` (obs_type "environment_state_agent_pos") from the block pose.

    `block_pose` (..., 3) holds block x, y, angle as in PushT's `state[2:5]`: the body origin in
    pixels and the angle in radians. Returns (..., 16) float64 [x0, y0, ..., x7, y7], the corners
    of the T rotated by the angle about the body origin and moved to it, as `PushTEnv.get_keypoints`
    computes them (its corner order, see `PUSHT_T_KEYPOINTS`).
    """
    pose = np.asarray(block_pose, dtype=np.float64)
    if pose.shape[-1:] != (3,):
        raise ValueError(f"block_pose must end in (x, y, angle), got shape {pose.shape}")
    cos, sin = np.cos(pose[..., 2:3]), np.sin(pose[..., 2:3])
    local_x, local_y = PUSHT_T_KEYPOINTS[:, 0], PUSHT_T_KEYPOINTS[:, 1]
    world_x = local_x * cos - local_y * sin + pose[..., 0:1]
    world_y = local_x * sin + local_y * cos + pose[..., 1:2]
    return np.stack([world_x, world_y], axis=-1).reshape(*pose.shape[:-1], 2 * len(PUSHT_T_KEYPOINTS))


@dataclass(frozen=True)
class ArrayMapping:
    """One zarr array -> one LeRobot feature.

    Attributes:
        source: array path in the store, e.g. "data/state".
        key: LeRobot feature key, e.g. "observation.state".
        columns: (start, stop) slice of the array's last axis, None for all of it.
        derive: applied to the (frames, ...) values after slicing, e.g. `pusht_environment_state`.
        names: feature names of a 1-D feature; generated from the array name when None.
    """

    source: str
    key: str
    columns: tuple[int | None, int | None] | None = None
    derive: Callable[[np.ndarray], np.ndarray] | None = None
    names: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, spec: str) -> ArrayMapping:
        """Parse `data/<array>[start:stop]=<lerobot key>`; a bare `<array>` means `data/<array>`."""
        match = _SPEC_PATTERN.match(spec.strip())
        if match is None:
            raise ZarrFormatError(
                f"bad mapping {spec!r}: expected 'data/<array>=<lerobot key>' or "
                "'data/<array>[start:stop]=<lerobot key>' (the slice takes columns of the last axis)"
            )
        source = match["source"].strip("/")
        if "/" not in source:
            source = f"data/{source}"
        columns = None
        if match["start"] is not None:
            columns = (int(match["start"]) if match["start"] else None, int(match["stop"]) if match["stop"] else None)
        return cls(source=source, key=match["key"], columns=columns)

    def describe(self) -> str:
        columns = ""
        if self.columns is not None:
            start, stop = self.columns
            columns = f"[{'' if start is None else start}:{'' if stop is None else stop}]"
        derive = f" via {self.derive.__name__}" if self.derive is not None else ""
        return f"{self.source}{columns}{derive} -> {self.key}"


@dataclass(frozen=True)
class MappingPreset:
    """A named mapping with the dataset facts the format itself does not record."""

    name: str
    description: str
    arrays: tuple[ArrayMapping, ...]
    fps: int | None = None
    task: str | None = None
    robot_type: str | None = None


_XY = ("x", "y")
_PUSHT_ENV_STATE_NAMES = tuple(f"keypoint{k}_{axis}" for k in range(len(PUSHT_T_KEYPOINTS)) for axis in _XY)
_PUSHT_COMMON = (
    ArrayMapping("data/state", OBS_STATE, columns=(0, 2), names=_XY),
    ArrayMapping("data/action", ACTION, names=_XY),
)

MAPPING_PRESETS: dict[str, MappingPreset] = {
    preset.name: preset
    for preset in (
        MappingPreset(
            name="pusht",
            description="PushT images: observation.image, observation.state (agent x, y), action",
            arrays=(ArrayMapping("data/img", OBS_IMAGE), *_PUSHT_COMMON),
            fps=PUSHT_FPS,
            task=PUSHT_TASK,
            robot_type="2d pointer",
        ),
        MappingPreset(
            name="pusht_keypoints",
            description="PushT keypoints: observation.environment_state (gym-pusht's 16 T-corner coordinates "
            "from the block pose), observation.state, action",
            arrays=(
                ArrayMapping(
                    "data/state",
                    OBS_ENV_STATE,
                    columns=(2, 5),
                    derive=pusht_environment_state,
                    names=_PUSHT_ENV_STATE_NAMES,
                ),
                *_PUSHT_COMMON,
            ),
            fps=PUSHT_FPS,
            task=PUSHT_TASK,
            robot_type="2d pointer",
        ),
        MappingPreset(
            name="dp3",
            description="3D Diffusion Policy: observation.pointcloud (data/point_cloud), observation.state, action "
            "(give --fps and --task; add images or depth with --map)",
            arrays=(
                ArrayMapping("data/point_cloud", OBS_POINTCLOUD),
                ArrayMapping("data/state", OBS_STATE),
                ArrayMapping("data/action", ACTION),
            ),
        ),
    )
}


@dataclass(frozen=True)
class ZarrConversionSummary:
    """What `convert_zarr` wrote."""

    root: Path
    repo_id: str
    num_episodes: int
    num_frames: int
    episodes_in_store: int
    features: dict[str, dict[str, Any]] = field(repr=False)
    seconds: float
    dropped_episodes: list[tuple[int, str]] = field(default_factory=list)

    def describe(self) -> str:
        lines = [
            f"Wrote {self.num_episodes} episodes ({self.num_frames} frames; the store "
            f"holds {self.episodes_in_store}) to {self.root} in {self.seconds:.1f} s.",
        ]
        for index, problem in self.dropped_episodes:
            lines.append(f"  left out episode {index}: {problem}")
        for key, spec in self.features.items():
            lines.append(f"  {key}: {spec['dtype']} {tuple(spec['shape'])}")
        lines.append(f"Load it with LeRobotDataset('{self.repo_id}', root='{self.root}').")
        return "\n".join(lines)


def resolve_mappings(mapping: str | None, extra: Sequence[str | ArrayMapping] = ()) -> list[ArrayMapping]:
    """The preset's arrays followed by `extra`; an extra mapping onto a preset's key replaces it."""
    if mapping is not None and mapping not in MAPPING_PRESETS:
        raise ZarrFormatError(f"unknown mapping {mapping!r}; known mappings: {', '.join(MAPPING_PRESETS)}")
    by_key: dict[str, ArrayMapping] = {}
    if mapping is not None:
        by_key.update((m.key, m) for m in MAPPING_PRESETS[mapping].arrays)
    extra_keys: set[str] = set()
    for item in extra:
        parsed = ArrayMapping.parse(item) if isinstance(item, str) else item
        if parsed.key in extra_keys:
            raise ZarrFormatError(f"two mappings write the feature {parsed.key!r}")
        extra_keys.add(parsed.key)
        by_key[parsed.key] = parsed
    if not by_key:
        raise ZarrFormatError(
            "nothing to convert: pass a mapping preset "
            f"({', '.join(MAPPING_PRESETS)}) and/or mappings 'data/<array>=<lerobot key>'"
        )
    for key in by_key:
        if key in _RESERVED_KEYS:
            raise ZarrFormatError(f"{key!r} is filled in by LeRobot and cannot be a mapping target")
    return list(by_key.values())


def feature_kind(key: str) -> FeatureKind:
    """How a LeRobot key is stored, by the plugin's and LeRobot's naming conventions."""
    if key == OBS_IMAGE or key.startswith(OBS_IMAGES + "."):
        return "image"
    if is_depth_key(key):
        return "depth"
    if key == OBS_POINTCLOUD:
        return "pointcloud"
    return "vector"


def _open_store(path: Path) -> Any:
    import zarr  # deferred: only conversions need it, and it is slow to import

    if not path.exists():
        raise FileNotFoundError(f"zarr store not found: {path}")
    try:
        if path.is_file():
            # Diffusion Policy also ships replay buffers as zipped stores (`*.zarr.zip`).
            return zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
        return zarr.open_group(path, mode="r")
    except Exception as err:
        raise ZarrFormatError(f"{path} is not a readable zarr group: {err}") from err


def _get_array(group: Any, source: str, store_path: Path) -> Any:
    import zarr

    try:
        node = group[source]
    except KeyError:
        parent = source.rsplit("/", 1)[0] if "/" in source else ""
        try:
            siblings = sorted(group[parent].array_keys()) if parent else sorted(group.array_keys())
        except (KeyError, AttributeError):  # no such parent, or the parent is an array
            siblings = []
        hint = f" (arrays under {parent or '/'}: {', '.join(siblings)})" if siblings else ""
        raise ZarrFormatError(f"{store_path}: array '{source}' is missing{hint}") from None
    if not isinstance(node, zarr.Array):
        raise ZarrFormatError(f"{store_path}: '{source}' is a group, not an array")
    return node


def read_episode_ends(group: Any, store_path: Path) -> np.ndarray:
    """`meta/episode_ends` as int64, checked to be 1-D, positive and strictly increasing."""
    array = _get_array(group, EPISODE_ENDS, store_path)
    if array.ndim != 1 or array.shape[0] == 0:
        raise ZarrFormatError(f"{store_path}: '{EPISODE_ENDS}' must be a non-empty 1-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ZarrFormatError(f"{store_path}: '{EPISODE_ENDS}' must hold integers, got dtype {array.dtype}")
    ends = np.asarray(array[:], dtype=np.int64)
    if ends[0] <= 0:
        raise ZarrFormatError(f"{store_path}: '{EPISODE_ENDS}' starts at {ends[0]}; episode 0 would be empty")
    steps = np.diff(ends)
    if (steps <= 0).any():
        bad = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise ZarrFormatError(
            f"{store_path}: '{EPISODE_ENDS}' must be strictly increasing, but episode {bad} ends at frame "
            f"{ends[bad]} after episode {bad - 1} ended at {ends[bad - 1]}"
        )
    return ends


class _Column:
    """One mapping bound to its zarr array: checks it, gives its feature spec and per-episode values."""

    def __init__(self, mapping: ArrayMapping, array: Any, num_frames: int, store_path: Path, video: bool) -> None:
        self.mapping = mapping
        self.array = array
        self.kind = feature_kind(mapping.key)
        self.video = video
        self.where = f"{store_path}: '{mapping.source}' (-> {mapping.key})"
        if array.shape[0] != num_frames:
            raise ZarrFormatError(
                f"{store_path}: '{mapping.source}' has {array.shape[0]} frames but '{EPISODE_ENDS}' ends at "
                f"{num_frames}; every data array must hold one row per frame"
            )
        if mapping.columns is not None:
            if array.ndim < 2:
                raise ZarrFormatError(f"{self.where}: a column slice needs per-frame vectors, got shape {array.shape}")
            width = len(range(*slice(*mapping.columns).indices(array.shape[-1])))
            if width == 0:
                raise ZarrFormatError(
                    f"{self.where}: slice {mapping.columns} selects no column of the last axis ({array.shape[-1]})"
                )
        # Point-cloud colours are rescaled or not for the whole array: decided on the first episode.
        self.color_scale: float | None = None
        self._warned_dim = False
        # The spec comes from converting one frame, so it reflects slicing and `derive` exactly.
        self.spec = self._spec(self._convert(self._raw(0, 1), probe=True)[0])

    def _raw(self, start: int, end: int) -> np.ndarray:
        values = np.asarray(self.array[start:end])
        if self.mapping.columns is not None:
            values = values[..., slice(*self.mapping.columns)]
        if self.mapping.derive is not None:
            values = np.asarray(self.mapping.derive(values))
        return values

    def episode(self, start: int, end: int) -> np.ndarray:
        return self._convert(self._raw(start, end))

    def _convert(self, values: np.ndarray, probe: bool = False) -> np.ndarray:
        if self.kind == "image":
            return self._images(values, probe)
        if self.kind == "depth":
            return self._depth(values)
        if self.kind == "pointcloud":
            return self._pointcloud(values, probe)
        if values.ndim == 1:
            values = values[:, None]
        if self.mapping.key == ACTION or self.mapping.key.startswith("observation."):
            return values.astype(np.float32, copy=False)
        if values.dtype == np.bool_:
            return values
        if np.issubdtype(values.dtype, np.integer):
            return values.astype(np.int64, copy=False)
        return values.astype(np.float32, copy=False)

    def _images(self, values: np.ndarray, probe: bool) -> np.ndarray:
        if values.ndim != 4 or 3 not in (values.shape[-1], values.shape[1]):
            raise ZarrFormatError(f"{self.where}: images must be (N, H, W, 3) or (N, 3, H, W), got {values.shape}")
        if values.shape[-1] != 3:
            values = values.transpose(0, 2, 3, 1)
        if values.dtype == np.uint8:
            return values
        if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number):
            raise ZarrFormatError(f"{self.where}: images must be numeric, got dtype {values.dtype}")
        low, high = float(values.min()), float(values.max())
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
            raise ZarrFormatError(f"{self.where}: image values must lie in [0, 255], found [{low}, {high}]")
        if not probe and high <= 1.0 and np.issubdtype(values.dtype, np.floating) and not self._warned_dim:
            # DP's replay buffers store 0-255 floats; [0, 1] floats would be written nearly black.
            warnings.warn(f"{self.where}: float images all lie in [0, 1]; they are read as 0-255", stacklevel=2)
            self._warned_dim = True
        return np.rint(values).astype(np.uint8)

    def _depth(self, values: np.ndarray) -> np.ndarray:
        if values.ndim == 4 and values.shape[-1] == 1:
            values = values[..., 0]
        elif values.ndim == 4 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 3:
            raise ZarrFormatError(
                f"{self.where}: depth must be (N, H, W), (N, H, W, 1) or (N, 1, H, W), got {values.shape}"
            )
        return values[:, None].astype(np.float32, copy=False)

    def _pointcloud(self, values: np.ndarray, probe: bool) -> np.ndarray:
        if values.ndim != 3 or values.shape[-1] not in (3, 6):
            raise ZarrFormatError(
                f"{self.where}: point clouds must be (N, points, 3) xyz or (N, points, 6) xyz + rgb, got "
                f"{values.shape}; a slice such as '{self.mapping.source}[:3]' keeps xyz only"
            )
        values = values.astype(np.float32)
        if values.shape[-1] == 6 and not probe:
            colour_max = float(values[..., 3:].max())
            if self.color_scale is None:
                self.color_scale = 1.0 / 255.0 if colour_max > 1.0 else 1.0
            if colour_max * self.color_scale > 1.0 + 1e-6:
                raise ZarrFormatError(
                    f"{self.where}: point colours reach {colour_max}, but the first episode's lie in [0, 1]; "
                    "colours must be all in [0, 1] or all in [0, 255]"
                )
            values[..., 3:] *= self.color_scale
        return values

    def _spec(self, frame: np.ndarray) -> dict[str, Any]:
        if self.kind == "image":
            if self.video and min(frame.shape[:2]) < MIN_VIDEO_SIZE:
                raise ZarrFormatError(
                    f"{self.where}: {frame.shape[0]}x{frame.shape[1]} images are too small for video encoding "
                    f"(at least {MIN_VIDEO_SIZE}x{MIN_VIDEO_SIZE}); store them as images instead"
                )
            return {
                "dtype": "video" if self.video else "image",
                "shape": frame.shape,
                "names": ["height", "width", "channels"],
            }
        if self.kind == "depth":
            return {"dtype": "float32", "shape": frame.shape, "names": ["channels", "height", "width"]}
        if self.kind == "pointcloud":
            return {"dtype": "float32", "shape": frame.shape, "names": ["points", "channels"]}
        names: list[str] | None = None
        if frame.ndim == 1:
            names = list(self.mapping.names) if self.mapping.names is not None else self._default_names(frame.shape[0])
            if len(names) != frame.shape[0]:
                raise ZarrFormatError(f"{self.where}: {len(names)} names for {frame.shape[0]} values")
        return {"dtype": str(frame.dtype), "shape": frame.shape, "names": names}

    def _default_names(self, width: int) -> list[str]:
        base = self.mapping.source.rsplit("/", 1)[-1]
        if self.mapping.derive is not None:
            return [f"{base}_{i}" for i in range(width)]
        first = 0
        if self.mapping.columns is not None:
            first = slice(*self.mapping.columns).indices(self.array.shape[-1])[0]
        return [f"{base}_{first + i}" for i in range(width)]


def convert_zarr(
    zarr_path: str | Path,
    output: str | Path,
    mapping: str | None = None,
    extra_mappings: Sequence[str | ArrayMapping] = (),
    repo_id: str | None = None,
    fps: int | None = None,
    task: str | None = None,
    robot_type: str | None = None,
    max_episodes: int | None = None,
    video: bool = False,
    image_writer_threads: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    drop_nonfinite_episodes: bool = False,
) -> ZarrConversionSummary:
    """Convert a Diffusion Policy / DP3 zarr replay buffer into a LeRobotDataset v3 at `output`.

    Args:
        zarr_path: the store (a `.zarr` folder or a zipped store).
        output: dataset folder to create; built beside it and renamed into place when complete, so an
            interrupted or failed conversion leaves nothing there.
        mapping: a `MAPPING_PRESETS` name, or None to use `extra_mappings` only.
        extra_mappings: `data/<array>[start:stop]=<key>` strings or `ArrayMapping`s, added to the
            preset's (one with a preset's key replaces that entry).
        repo_id: dataset id recorded in the metadata; defaults to `local/<store name>`.
        fps, task, robot_type: default to the preset's; fps and task are required without one.
        max_episodes: convert only the first episodes, for quick runs.
        video: store image features as video (LeRobot's default codec) instead of lossless PNG.
        image_writer_threads: threads LeRobot uses to write PNGs (0: in the calling thread).
        overwrite: replace an existing `output`.
        progress: show a progress bar over episodes.
        drop_nonfinite_episodes: leave out (and list in the summary) the episodes whose floating-point
            arrays hold NaN or inf, instead of refusing the store.

    Raises:
        FileNotFoundError: the store is missing.
        FileExistsError: `output` exists and `overwrite` is False.
        ZarrFormatError (a ValueError): a missing or misshapen array, `meta/episode_ends` not strictly
            increasing or not matching the arrays' length, an unknown preset or a bad mapping/argument, a NaN
            or inf in a written array (naming the array, the episode and the frame).
    """
    started = time.perf_counter()
    store_path = Path(zarr_path)
    root = Path(output)
    preset = MAPPING_PRESETS.get(mapping) if mapping is not None else None
    mappings = resolve_mappings(mapping, extra_mappings)
    fps = fps if fps is not None else (preset.fps if preset else None)
    task = task if task is not None else (preset.task if preset else None)
    robot_type = robot_type if robot_type is not None else (preset.robot_type if preset else None)
    if fps is None or fps <= 0:
        raise ZarrFormatError(f"fps must be a positive integer (the format does not record it), got {fps!r}")
    if not task:
        raise ZarrFormatError("a task description is required (the format does not record one)")
    if max_episodes is not None and max_episodes < 1:
        raise ZarrFormatError(f"max_episodes must be at least 1, got {max_episodes!r}")
    if image_writer_threads < 0:
        raise ZarrFormatError(f"image_writer_threads must be >= 0, got {image_writer_threads!r}")
    # Checked before the (slower) store checks, so the common mistake is reported first.
    try:
        check_destination(root, overwrite, sources=[store_path])
    except ValueError as err:
        raise ZarrFormatError(str(err)) from err

    group = _open_store(store_path)
    ends = read_episode_ends(group, store_path)
    columns = [_Column(m, _get_array(group, m.source, store_path), int(ends[-1]), store_path, video) for m in mappings]
    features = {column.mapping.key: column.spec for column in columns}
    num_episodes = len(ends) if max_episodes is None else min(max_episodes, len(ends))
    starts = np.concatenate([[0], ends[:-1]])
    repo_id = repo_id or f"local/{store_path.name.split('.')[0] or 'zarr_dataset'}"

    num_frames = 0
    dropped: list[tuple[int, str]] = []
    with atomic_lerobot_dataset(
        root,
        overwrite=overwrite,
        sources=[store_path],
        repo_id=repo_id,
        fps=fps,
        features=features,
        robot_type=robot_type,
        use_videos=video,
        image_writer_threads=image_writer_threads,
    ) as dataset:
        bar = tqdm(range(num_episodes), desc=f"{store_path.name} episodes", unit="episode", disable=not progress)
        for index in bar:
            start, end = int(starts[index]), int(ends[index])
            values = {column.mapping.key: column.episode(start, end) for column in columns}
            # Depth maps mark missing returns with NaN or inf, which the point-cloud step already drops.
            bad = first_nonfinite({c.mapping.key: values[c.mapping.key] for c in columns if c.kind != "depth"})
            if bad is not None:
                source = next(c.mapping.source for c in columns if c.mapping.key == bad.key)
                if drop_nonfinite_episodes:
                    dropped.append((index, f"{source} -> {bad.describe()}"))
                    continue
                raise ZarrFormatError(
                    f"{store_path}: {source} -> {bad.describe()} of episode {index} (store row {start + bad.frame}); "
                    "training on it would give NaN statistics and a NaN loss. Fix the store, or pass "
                    "drop_nonfinite_episodes=True (--drop-nonfinite-episodes) to leave such episodes out."
                )
            for i in range(end - start):
                frame: dict[str, Any] = {key: value[i] for key, value in values.items()}
                frame["task"] = task
                dataset.add_frame(frame)
            dataset.save_episode()
            num_frames += end - start
        if len(dropped) == num_episodes:
            raise ZarrFormatError(f"{store_path}: every episode holds NaN or inf; nothing to write ({dropped[0][1]})")

    return ZarrConversionSummary(
        root=root,
        repo_id=repo_id,
        num_episodes=num_episodes - len(dropped),
        num_frames=num_frames,
        episodes_in_store=len(ends),
        features=features,
        seconds=time.perf_counter() - started,
        dropped_episodes=dropped,
    )
