"""Observation keys this plugin adds on top of LeRobot's (`observation.state`, `observation.images.*`, ...).

Depth and camera parameters travel as plain float tensors so that they are stored losslessly in a
LeRobotDataset (parquet) and pass through `lerobot-eval`'s `preprocess_observation` unchanged:
- `observation.depth.<cam>`: (1, H, W) float32, metric depth along the optical axis (z in the camera
  frame), in metres. Zero or non-finite marks an invalid pixel.
- `observation.camera.<cam>.intrinsics`: (3, 3) pinhole matrix, OpenCV convention (x right, y down,
  z forward, positive focal lengths).
- `observation.camera.<cam>.extrinsics`: (4, 4) camera-to-world transform.
- `observation.pointcloud`: (N, 3) xyz or (N, 6) xyz + rgb in [0, 1], world frame.

LeRobot's own depth maps (`observation.images.<cam>_depth`, `info.is_depth_map`; see
`lerobot_flowstep.processor.depth_maps`) are turned into `observation.depth.<cam>` by the policy's preprocessor.
"""

OBS_DEPTH_PREFIX = "observation.depth"
OBS_CAMERA_PREFIX = "observation.camera"
OBS_POINTCLOUD = "observation.pointcloud"
OBS_IMAGES_PREFIX = "observation.images."
# LeRobot names a camera's depth stream `<cam>_depth` (`lerobot-record` with a depth camera).
OBS_DEPTH_MAP_SUFFIX = "_depth"


def depth_key(camera: str) -> str:
    return f"{OBS_DEPTH_PREFIX}.{camera}"


def intrinsics_key(camera: str) -> str:
    return f"{OBS_CAMERA_PREFIX}.{camera}.intrinsics"


def extrinsics_key(camera: str) -> str:
    return f"{OBS_CAMERA_PREFIX}.{camera}.extrinsics"


def rgb_key(camera: str) -> str:
    return f"{OBS_IMAGES_PREFIX}{camera}"


def depth_map_key(camera: str) -> str:
    """LeRobot's key of a camera's depth map."""
    return f"{OBS_IMAGES_PREFIX}{camera}{OBS_DEPTH_MAP_SUFFIX}"


def is_camera_parameter_key(key: str) -> bool:
    return key.startswith(OBS_CAMERA_PREFIX + ".")


def is_depth_key(key: str) -> bool:
    return key.startswith(OBS_DEPTH_PREFIX + ".")
