"""LeRobotDataset feature specs of what several writers store the same way: cameras with depth and parameters,
and the fused point cloud."""

from __future__ import annotations

from typing import Any

from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.processor.pointcloud import PointCloudConfig


def camera_features(camera: str, height: int, width: int) -> dict[str, dict[str, Any]]:
    """RGB (PNG), metric depth and the per-frame intrinsics and camera-to-world extrinsics of one camera."""
    return {
        rgb_key(camera): {"dtype": "image", "shape": (height, width, 3), "names": ["height", "width", "channels"]},
        # Plain float arrays rather than LeRobot's depth-video features: parquet keeps metric depth exact, and
        # no depth-unit rescaling applies on read.
        depth_key(camera): {"dtype": "float32", "shape": (1, height, width), "names": ["channels", "height", "width"]},
        intrinsics_key(camera): {"dtype": "float32", "shape": (3, 3), "names": None},
        extrinsics_key(camera): {"dtype": "float32", "shape": (4, 4), "names": None},
    }


def pointcloud_feature(pointcloud: PointCloudConfig) -> dict[str, dict[str, Any]]:
    """`observation.pointcloud` as the processor step with these settings makes it."""
    width = 6 if pointcloud.use_rgb else 3
    return {OBS_POINTCLOUD: {"dtype": "float32", "shape": (pointcloud.num_points, width), "names": None}}
