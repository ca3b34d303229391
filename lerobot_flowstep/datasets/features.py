"""LeRobotDataset feature specs of what several writers store the same way: RGB-D cameras, as LeRobot records a
depth camera, and the fused point cloud.

A camera `<cam>` is written as LeRobot 0.6 records an RGB-D camera (`lerobot-record` with a depth camera):
- `observation.images.<cam>` (H, W, 3) RGB;
- `observation.images.<cam>_depth` (H, W, 1) depth map, `info.is_depth_map`, given to `add_frame` as float32
  metres (LeRobot records `info.depth_unit: m` and reads it back in `depth_output_unit`, millimetres by default);
- a fixed camera's calibration in the depth map's `info` (`camera_intrinsics`, `camera_to_world`: what
  `lerobot-flowstep calibrate` writes, `datasets.calibration.calibration_info`), a moving camera's per frame as
  `observation.camera.<cam>.intrinsics` (3, 3) / `.extrinsics` (4, 4) float32.

Storage (`depth_storage`, `rgb_storage`):
- `video` (the default for depth): LeRobot's depth encoder, HEVC `gray12le` lossless over 12-bit log-quantized
  depth in [depth_min, depth_max] (0.01-10 m unless the writer's `DepthEncoderConfig` says otherwise): the
  read-back error at depth z is at most half a quantum, (z + shift) * (exp(L / 4095 / 2) - 1) with
  L = ln((depth_max + shift) / (depth_min + shift)), about 1.2 mm at 4 m with the defaults, plus LeRobot's
  rounding to whole millimetres when read in mm. Depth at or outside the range ends (a 0 "no return" included)
  reads back as the end, which the policy's depth step treats as invalid.
- `image`: lossless TIFF in the parquet rows (exact, larger, and formatted with every row LeRobot reads).
- RGB `auto` (the default): video (LeRobot's SVT-AV1 encoder, lossy) from 64 px on, PNG below, since SVT-AV1
  refuses frames under 64 px. Video keeps the images out of the parquet rows, which LeRobot formats whole for
  every frame a sample reads (BENCHMARKS.md, "Reading 3-D datasets").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_map_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.processor.depth_maps import EXTRINSICS_INFO, INTRINSICS_INFO
from lerobot_flowstep.processor.pointcloud import PointCloudConfig

DEPTH_STORAGES = ("video", "image")
RGB_STORAGES = ("auto", "video", "image")
# LeRobot's RGB encoder (SVT-AV1) fails on frames smaller than this in either dimension, its depth encoder
# (x265) below 16.
MIN_RGB_VIDEO_SIZE = 64
MIN_DEPTH_VIDEO_SIZE = 16
_IMAGE_NAMES = ["height", "width", "channels"]


class CameraMovedError(ValueError):
    """A frame of a camera written as fixed has other parameters than its recorded calibration."""


def rgb_dtype(storage: str, height: int, width: int) -> str:
    """The LeRobot dtype an RGB camera is stored as: `auto` is video from `MIN_RGB_VIDEO_SIZE` px on."""
    if storage not in RGB_STORAGES:
        raise ValueError(f"rgb storage must be one of {RGB_STORAGES}, got '{storage}'.")
    if storage == "auto":
        return "video" if min(height, width) >= MIN_RGB_VIDEO_SIZE else "image"
    if storage == "video" and min(height, width) < MIN_RGB_VIDEO_SIZE:
        raise ValueError(
            f"RGB video needs frames of at least {MIN_RGB_VIDEO_SIZE} px (LeRobot's SVT-AV1 encoder fails below); "
            f"these are {height}x{width}: store RGB as image."
        )
    return storage


def camera_features(
    camera: str,
    height: int,
    width: int,
    calibration: dict[str, Any] | None = None,
    depth_storage: str = "video",
    rgb_storage: str = "auto",
) -> dict[str, dict[str, Any]]:
    """RGB and depth map of one camera, with `calibration` (`calibration_info(...)`) in the depth map's info for a
    fixed camera, or per-frame intrinsics and camera-to-world extrinsics when `calibration` is None (moving)."""
    if depth_storage not in DEPTH_STORAGES:
        raise ValueError(f"depth storage must be one of {DEPTH_STORAGES}, got '{depth_storage}'.")
    if depth_storage == "video" and min(height, width) < MIN_DEPTH_VIDEO_SIZE:
        raise ValueError(
            f"Depth video needs frames of at least {MIN_DEPTH_VIDEO_SIZE} px (LeRobot's x265 depth encoder fails "
            f"below); camera '{camera}' is {height}x{width}: store its depth as image (--depth-storage image)."
        )
    features = {
        rgb_key(camera): {
            "dtype": rgb_dtype(rgb_storage, height, width),
            "shape": (height, width, 3),
            "names": _IMAGE_NAMES,
        },
        depth_map_key(camera): {
            "dtype": depth_storage,
            "shape": (height, width, 1),
            "names": _IMAGE_NAMES,
            "info": {"is_depth_map": True, **(calibration or {})},
        },
    }
    if calibration is None:
        features[intrinsics_key(camera)] = {"dtype": "float32", "shape": (3, 3), "names": None}
        features[extrinsics_key(camera)] = {"dtype": "float32", "shape": (4, 4), "names": None}
    return features


def camera_frame(
    camera: str,
    rgb: np.ndarray,
    depth: np.ndarray,
    intrinsics: np.ndarray,
    extrinsics: np.ndarray,
    calibration: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """One frame of `camera_features(camera, ..., calibration)` for `add_frame`: `depth` (H, W), (1, H, W) or
    (H, W, 1) metres. A fixed camera's parameters must equal its `calibration` (a camera that moved would be
    back-projected from the wrong pose without a word): CameraMovedError naming the camera otherwise."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    elif depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ValueError(f"The depth of camera '{camera}' must be one map (H, W), got shape {depth.shape}.")
    frame = {rgb_key(camera): rgb, depth_map_key(camera): depth[..., None]}
    if calibration is None:
        frame[intrinsics_key(camera)] = np.asarray(intrinsics, dtype=np.float32)
        frame[extrinsics_key(camera)] = np.asarray(extrinsics, dtype=np.float32)
        return frame
    for name, given in ((INTRINSICS_INFO, intrinsics), (EXTRINSICS_INFO, extrinsics)):
        if not np.allclose(np.asarray(given, dtype=np.float64), calibration[name], rtol=1e-5, atol=1e-5):
            raise CameraMovedError(
                f"Camera '{camera}' is written as a fixed camera (calibration in its depth map's info), but this "
                f"frame's {name} differ from the recorded ones: {np.asarray(given).tolist()} vs "
                f"{calibration[name]}. Write it as a moving camera (per-frame parameters)."
            )
    return frame


def uses_video(features: dict[str, dict[str, Any]]) -> bool:
    """Whether `LeRobotDataset.create` needs `use_videos=True` for these features."""
    return any(feature["dtype"] == "video" for feature in features.values())


def pointcloud_feature(pointcloud: PointCloudConfig) -> dict[str, dict[str, Any]]:
    """`observation.pointcloud` as the processor step with these settings makes it."""
    width = 6 if pointcloud.use_rgb else 3
    return {OBS_POINTCLOUD: {"dtype": "float32", "shape": (pointcloud.num_points, width), "names": None}}


def add_storage_arguments(parser: Any) -> None:
    """`--depth-storage` and `--rgb-storage` of the writers' commands (an `argparse` parser)."""
    parser.add_argument(
        "--depth-storage",
        default="video",
        choices=DEPTH_STORAGES,
        help="depth maps as LeRobot's lossless 12-bit depth video (default) or as exact float TIFF images",
    )
    parser.add_argument(
        "--rgb-storage",
        default="auto",
        choices=RGB_STORAGES,
        help=f"RGB as video (lossy AV1, frames of {MIN_RGB_VIDEO_SIZE} px or more) or PNG; auto: video when it can",
    )
