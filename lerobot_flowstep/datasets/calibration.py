"""Camera calibration that travels with a LeRobotDataset: `lerobot-flowstep calibrate`.

LeRobot records no camera parameters. This writes a depth camera's pinhole intrinsics (OpenCV convention) and
camera-to-world extrinsics (OpenCV axes: x right, y down, z forward) into its depth map's `info` in
`meta/info.json` (`camera_intrinsics`, `camera_to_world`), where `FlowstepBaseConfig.set_dataset_feature_metadata`
picks them up when a policy is made from the dataset. LeRobot keeps unknown `info` entries when it rewrites the
file (`update_video_info` merges), so the calibration survives later edits by LeRobot's own tools.

Calibration files read: ROS `camera_info` YAML (`camera_matrix`, as `camera_calibration` writes it; intrinsics
only), OpenCV FileStorage YAML/XML (`camera_matrix` or `K`, optionally `camera_to_world`), and JSON
(`{"intrinsics": 3x3, "camera_to_world": 4x4}`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lerobot_flowstep.constants import depth_map_key
from lerobot_flowstep.core.geometry import check_camera_parameters
from lerobot_flowstep.processor.depth_maps import EXTRINSICS_INFO, INTRINSICS_INFO, is_depth_map_feature


def read_calibration_file(path: Path) -> dict[str, np.ndarray]:
    """{"intrinsics": (3, 3)} and, when the file has it, {"extrinsics": (4, 4) camera-to-world}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Calibration file {path} does not exist.")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        result = {"intrinsics": _matrix(data.get("intrinsics", data.get("camera_matrix")), (3, 3), path, "intrinsics")}
        extrinsics = data.get("camera_to_world", data.get("extrinsics"))
        if extrinsics is not None:
            result["extrinsics"] = _matrix(extrinsics, (4, 4), path, "camera_to_world")
        return result
    if "!!opencv-matrix" in text or path.suffix.lower() == ".xml":
        return _read_opencv(path)
    import yaml  # a LeRobot dependency

    data = yaml.safe_load(text)
    if not isinstance(data, dict) or "camera_matrix" not in data:
        raise ValueError(
            f"{path} is not a calibration file this command reads: expected a ROS camera_info YAML (camera_matrix), "
            "an OpenCV FileStorage YAML/XML (camera_matrix or K), or JSON "
            "({'intrinsics': 3x3, 'camera_to_world': 4x4})."
        )
    camera_matrix = data["camera_matrix"]
    values = camera_matrix.get("data") if isinstance(camera_matrix, dict) else camera_matrix
    return {"intrinsics": _matrix(values, (3, 3), path, "camera_matrix")}


def _read_opencv(path: Path) -> dict[str, np.ndarray]:
    import cv2  # opencv is a LeRobot dependency

    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        result = {}
        wanted = ((("camera_matrix", "K"), (3, 3), "intrinsics"), (("camera_to_world",), (4, 4), "extrinsics"))
        for names, shape, out in wanted:
            for name in names:
                node = storage.getNode(name)
                if not node.empty():
                    result[out] = _matrix(node.mat(), shape, path, name)
                    break
    finally:
        storage.release()
    if "intrinsics" not in result:
        raise ValueError(f"{path} holds no 'camera_matrix' or 'K' matrix.")
    return result


def _matrix(values: Any, shape: tuple[int, int], source: Path | str, name: str) -> np.ndarray:
    try:
        matrix = np.asarray(values, dtype=np.float64).reshape(shape)
    except (TypeError, ValueError) as err:
        size = shape[0] * shape[1]
        raise ValueError(f"{name} in {source} must hold {size} numbers ({shape}), got {values!r}.") from err
    return matrix


def calibrate_dataset(
    root: Path,
    camera: str,
    intrinsics: Sequence[float] | np.ndarray | None = None,
    extrinsics: Sequence[float] | np.ndarray | None = None,
    calibration_file: Path | None = None,
) -> Path:
    """Write `camera`'s calibration into its depth map's info in `root/meta/info.json`, atomically (the file is
    replaced in one rename, so a reader sees the old or the new file, never half of one). Numbers given directly
    take precedence over the file's."""
    info_path = Path(root) / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{root} is not a LeRobotDataset (no {info_path}).")
    info = json.loads(info_path.read_text())
    features = info.get("features", {})
    key = depth_map_key(camera)
    if key not in features or not is_depth_map_feature(features[key]):
        depth_maps = sorted(k for k, ft in features.items() if is_depth_map_feature(ft))
        raise ValueError(
            f"{root} has no depth map '{key}' for camera '{camera}' (its depth maps: {depth_maps or 'none'})."
        )
    from_file = read_calibration_file(calibration_file) if calibration_file is not None else {}
    source = "--intrinsics" if intrinsics is not None else str(calibration_file)
    k = from_file.get("intrinsics") if intrinsics is None else _matrix(intrinsics, (3, 3), "--intrinsics", "intrinsics")
    t = from_file.get("extrinsics") if extrinsics is None else _matrix(extrinsics, (4, 4), "--extrinsics", "extrinsics")
    missing = [name for name, value in (("intrinsics", k), ("camera-to-world extrinsics", t)) if value is None]
    if missing:
        raise ValueError(
            f"Camera '{camera}' needs both intrinsics and camera-to-world extrinsics; missing: {missing} "
            "(give --intrinsics / --extrinsics numbers, or a --calibration-file holding them)."
        )
    calibration = calibration_info(camera, k, t, source, _image_size(features[key]))
    feature_info = features[key].setdefault("info", {}) or {}
    feature_info.update(calibration)
    features[key]["info"] = feature_info
    write_json_atomic(info_path, info)
    return info_path


def calibration_info(
    camera: str,
    intrinsics: Sequence[float] | np.ndarray,
    extrinsics: Sequence[float] | np.ndarray,
    source: str = "the writer",
    image_size: tuple[int, int] | None = None,
) -> dict[str, list[list[float]]]:
    """The info entries of a depth map that carry its camera's calibration, checked: finite, non-zero focal
    lengths, a rigid camera-to-world transform and, given the (height, width), a principal point inside the map.
    The one format `calibrate_dataset` and the plugin's writers write."""
    k = _matrix(intrinsics, (3, 3), source, "intrinsics")
    t = _matrix(extrinsics, (4, 4), source, "extrinsics")
    check_camera_parameters([torch.from_numpy(k)], [torch.from_numpy(t)], [f"{camera} ({source})"])
    if not np.allclose(t[3], [0, 0, 0, 1]):
        raise ValueError(f"The extrinsics of camera '{camera}' are not a rigid transform: last row {t[3].tolist()}.")
    if image_size is not None:
        height, width = image_size
        cx, cy = k[0, 2], k[1, 2]
        if not (0 <= cx <= width and 0 <= cy <= height):
            raise ValueError(
                f"The principal point ({cx:g}, {cy:g}) of camera '{camera}' lies outside its {width}x{height} "
                "depth map: were the intrinsics calibrated at another resolution?"
            )
    return {INTRINSICS_INFO: k.tolist(), EXTRINSICS_INFO: t.tolist()}


def _image_size(feature: dict[str, Any]) -> tuple[int, int]:
    shape, names = feature["shape"], feature.get("names") or []
    if len(names) == 3 and names[2] in ("channel", "channels"):
        return shape[0], shape[1]
    return shape[-2], shape[-1]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path` so that a reader sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=4)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
