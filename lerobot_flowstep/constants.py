"""Observation keys this plugin adds on top of LeRobot's (`observation.state`, `observation.images.*`, ...).

Depth and camera parameters travel as plain float tensors so that they are stored losslessly in a
LeRobotDataset (parquet) and pass through `lerobot-eval`'s `preprocess_observation` unchanged:
- `observation.depth.<cam>`: (1, H, W) float32, metric depth along the optical axis (z in the camera
  frame), in metres. Zero or non-finite marks an invalid pixel.
- `observation.camera.<cam>.intrinsics`: (3, 3) pinhole matrix, OpenCV convention (x right, y down,
  z forward, positive focal lengths).
- `observation.camera.<cam>.extrinsics`: (4, 4) camera-to-world transform.
- `observation.pointcloud`: (N, 3) xyz or (N, 6) xyz + rgb in [0, 1], world frame.
"""

OBS_DEPTH_PREFIX = "observation.depth"
OBS_CAMERA_PREFIX = "observation.camera"
OBS_POINTCLOUD = "observation.pointcloud"


def depth_key(camera: str) -> str:
    return f"{OBS_DEPTH_PREFIX}.{camera}"


def intrinsics_key(camera: str) -> str:
    return f"{OBS_CAMERA_PREFIX}.{camera}.intrinsics"


def extrinsics_key(camera: str) -> str:
    return f"{OBS_CAMERA_PREFIX}.{camera}.extrinsics"


def rgb_key(camera: str) -> str:
    return f"observation.images.{camera}"


def is_camera_parameter_key(key: str) -> bool:
    return key.startswith(OBS_CAMERA_PREFIX + ".")


def is_depth_key(key: str) -> bool:
    return key.startswith(OBS_DEPTH_PREFIX + ".")
