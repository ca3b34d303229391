"""RLBench demonstrations -> LeRobotDataset v3, without importing RLBench, PyRep or CoppeliaSim.

Input: a task folder as RLBench's dataset generators write it (layouts in `lerobot_flowstep.rlbench.demo_files`).

Output columns (frame t), each camera as LeRobot records an RGB-D camera (`datasets.features`):
- `observation.images.<cam>` (H, W, 3): RGB video (128 px and up) or PNG (`--rgb-storage`);
- `observation.images.<cam>_depth` (H, W, 1) depth map, `info.is_depth_map`: metres (camera-frame z) decoded
  from RLBench's 24-bit RGB-packed depth PNG with that frame's near/far planes, written through LeRobot's depth
  encoder (lossless 12-bit log-quantized video over 0.01-10 m, which holds RLBench's far planes of 3.2-4.5 m;
  pixels on the 0.01 m near plane read back as invalid) or as exact TIFF (`--depth-storage image`);
- camera parameters rewritten from RLBench's convention (negative focal lengths) to the plugin's OpenCV one
  (`geometry.flip_negative_focal`): for a fixed camera (all but the wrist) in its depth map's info
  (`camera_intrinsics`, `camera_to_world`; every frame is checked against them), for a moving one per frame as
  `observation.camera.<cam>.intrinsics` (3, 3) / `.extrinsics` (4, 4) float32;
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

Quaternions follow the sign rule of `lerobot_flowstep.rlbench.conventions`, which the env applies too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lerobot.utils.constants import ACTION, OBS_STATE
from tqdm import tqdm

from lerobot_flowstep.constants import OBS_POINTCLOUD
from lerobot_flowstep.datasets.atomic import atomic_lerobot_dataset, check_destination
from lerobot_flowstep.datasets.calibration import calibration_info
from lerobot_flowstep.datasets.features import (
    CameraMovedError,
    camera_features,
    camera_frame,
    pointcloud_feature,
    uses_video,
)
from lerobot_flowstep.processor.pointcloud import PointCloudConfig, fused_pointclouds
from lerobot_flowstep.rlbench.conventions import (
    ACTION_MODES,
    ACTION_NAMES,
    FPS,
    FRAME_COLUMN,
    RLBENCH_CAMERAS,
    RLBENCH_MOVING_CAMERAS,
    STATE_NAMES,
    TARGET_COLUMN,
    VARIATION_COLUMN,
    check_cameras,
)
from lerobot_flowstep.rlbench.demo_files import (
    EpisodeArrays,
    RLBenchDataError,
    RLBenchEpisode,
    discover_episodes,
    read_episode,
    read_task_description,
    read_variation_number,
)


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
    calibrations: dict[str, dict[str, Any] | None] | None = None,
    depth_storage: str = "video",
    rgb_storage: str = "auto",
) -> dict[str, dict[str, Any]]:
    """The LeRobot feature spec `convert_rlbench` writes; `calibrations[cam]` is a fixed camera's calibration
    (`calibration_info`), None (or absent) for a moving one."""
    calibrations = calibrations or {}
    features: dict[str, dict[str, Any]] = {
        OBS_STATE: {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": list(STATE_NAMES)},
        ACTION: {"dtype": "float32", "shape": (8,), "names": list(ACTION_NAMES[action_mode])},
        VARIATION_COLUMN: {"dtype": "int64", "shape": (1,), "names": None},
        FRAME_COLUMN: {"dtype": "int64", "shape": (1,), "names": None},
        TARGET_COLUMN: {"dtype": "int64", "shape": (1,), "names": None},
    }
    for cam in cameras:
        features.update(camera_features(cam, *image_shapes[cam], calibrations.get(cam), depth_storage, rgb_storage))
    if pointcloud is not None:
        features.update(pointcloud_feature(pointcloud))
    return features


def _rows(num_frames: int, keyframes: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Raw observation frames and the raw frames their actions aim at."""
    if keyframes is None:
        frames = np.arange(num_frames)
        return frames, np.minimum(frames + 1, num_frames - 1)
    targets = np.asarray(keyframes, dtype=np.int64)
    return np.concatenate([[0], targets[:-1]]), targets


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
    moving_cameras: Sequence[str] = RLBENCH_MOVING_CAMERAS,
    depth_storage: str = "video",
    rgb_storage: str = "auto",
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
    in background threads (LeRobot's image writer). `moving_cameras` keep per-frame parameters; the others'
    come from the first episode and must hold in every frame (RLBenchDataError naming the episode otherwise).
    `depth_storage` / `rgb_storage`: see `datasets.features`.
    """
    start = time.perf_counter()
    source, output = Path(source), Path(output)
    cameras = check_cameras(cameras, "cameras")
    if action_mode not in ACTION_MODES:
        raise ValueError(f"action_mode must be one of {ACTION_MODES}, got '{action_mode}'")
    if pointcloud is not None:
        missing = [c for c in check_cameras(pointcloud.cameras, "point-cloud cameras") if c not in cameras]
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
    calibrations = {
        cam: calibration_info(cam, first[3].intrinsics[cam][0], first[3].extrinsics[cam][0], first[0].name, shapes[cam])
        for cam in cameras
        if cam not in moving_cameras
    }
    features = rlbench_dataset_features(
        cameras, shapes, action_mode, pointcloud, calibrations, depth_storage, rgb_storage
    )

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
        try:
            written = _write_episode(
                dataset, arrays, cameras, calibrations, action_mode, keyframes_only, pointcloud, variation, description
            )
        except CameraMovedError as err:
            problem = f"{err} (pass the camera in moving_cameras / --moving-cameras)"
            if not skip_bad_episodes:
                raise RLBenchDataError(episode.name, episode.path, problem) from err
            summary.skipped.append((episode.name, problem))
            return
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
            use_videos=uses_video(features),
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
    calibrations: dict[str, dict[str, Any]],
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
    rows = []
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
            frame |= camera_frame(
                cam,
                arrays.rgb[cam][t],
                arrays.depth[cam][t],
                arrays.intrinsics[cam][t],
                arrays.extrinsics[cam][t],
                calibrations.get(cam),
            )
        if clouds is not None:
            frame[OBS_POINTCLOUD] = clouds[row]
        rows.append(frame)
    # Every frame is checked (a fixed camera that moved) before the first is added: a refused episode leaves
    # nothing in the dataset's episode buffer.
    for frame in rows:
        dataset.add_frame(frame)
    dataset.save_episode()
    return len(frames)
