"""RLBench's conventions, shared by the converter, the geometry check and the env: camera names, frame rate,
depth packing, workspace bounds, the state and action layouts, the dataset's extra columns, the rewrite of
RLBench's camera parameters to OpenCV's, and the point-cloud settings and fusion.

Quaternions are sign-canonicalised (q and -q are the same rotation) to the hemisphere of the gripper's
home orientation, pointing down: a fixed rule, so the env wrapper applies the same one at evaluation time,
and unlike "w >= 0" it does not flip back and forth around the gripper-down pose, where w is near 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lerobot_flowstep.core.geometry import flip_negative_focal, look_at_extrinsics
from lerobot_flowstep.processor.pointcloud import PointCloudConfig

RLBENCH_CAMERAS = ("front", "left_shoulder", "right_shoulder", "overhead", "wrist")
# The cameras that move with the arm; the others stand still in every scene.
RLBENCH_MOVING_CAMERAS = ("wrist",)
FPS = 20
# RLBench's `DEPTH_SCALE`: depth PNGs pack the normalised depth as a 24-bit integer (R high, B low byte).
DEPTH_SCALE = 2**24 - 1
# The gripper's home orientation (pointing down), (qx, qy, qz, qw): the reference hemisphere.
GRIPPER_DOWN_QUATERNION = np.array([0.0, 1.0, 0.0, 0.0])
# PerAct's scene bounds, the usual RLBench workspace: x, y, z low / high in metres.
DEFAULT_BOUNDS_LOW = (-0.3, -0.5, 0.6)
DEFAULT_BOUNDS_HIGH = (0.7, 0.5, 1.6)

ACTION_MODES: tuple[str, ...] = ("ee_pose", "joint_positions")
STATE_NAMES = [f"joint_{i}" for i in range(7)] + ["gripper_open", "x", "y", "z", "qx", "qy", "qz", "qw"]
ACTION_NAMES: dict[str, list[str]] = {
    "ee_pose": ["x", "y", "z", "qx", "qy", "qz", "qw", "gripper_open"],
    "joint_positions": [f"joint_{i}" for i in range(7)] + ["gripper_open"],
}
VARIATION_COLUMN = "rlbench_variation"
FRAME_COLUMN = "rlbench_frame_index"
TARGET_COLUMN = "rlbench_target_index"
# The gripper's home pose (x, y, z, qx, qy, qz, qw): the fake backend starts there, and the env assumes it
# until the first observation arrives.
HOME_POSE = np.array([0.28, 0.0, 1.47, 0.0, 0.9927, 0.0, 0.1209])
HOME_POSE[3:] /= np.linalg.norm(HOME_POSE[3:])


def check_cameras(cameras: Sequence[str], what: str) -> list[str]:
    """`cameras` as a list, refused (ValueError naming `what`) when empty, repeated or not RLBench's."""
    cameras = list(cameras)
    if not cameras:
        raise ValueError(f"{what}: give at least one camera ({', '.join(RLBENCH_CAMERAS)})")
    unknown = [c for c in cameras if c not in RLBENCH_CAMERAS]
    if unknown:
        raise ValueError(f"{what}: unknown camera name(s) {unknown}; RLBench's cameras are {list(RLBENCH_CAMERAS)}")
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"{what}: camera names repeat: {cameras}")
    return cameras


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
