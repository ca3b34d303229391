"""LeRobot depth maps -> the plugin's metric depth: the `flowstep_depth_maps` processor step.

LeRobot 0.6 records a depth camera `<cam>` as the feature `observation.images.<cam>_depth`, marked by
`info.is_depth_map`: a (1, H, W) map that `LeRobotDataset` reads back as float32 in its `depth_output_unit`
(`mm` unless `--dataset.depth_output_unit` says otherwise), and that a robot gives as uint16 millimetres. Its
video codec log-quantizes depth over [`depth_min`, `depth_max`] (0.01-10 m by default) and clips outside, so a
pixel at either end of that range (a sensor's 0 for "no return" included) is not a measurement.

A policy made from such a dataset keeps, in its config, which input keys are depth maps, the range each was
quantized over, the unit they arrive in (`depth_unit`) and the camera calibration written into the feature's
`info` (`camera_intrinsics`, `camera_to_world`; LeRobot records none, `lerobot-flowstep calibrate` adds it).
Its input features name the camera's metric depth `observation.depth.<cam>` (metres, invalid = 0, the format of
`lerobot_flowstep.constants`), and this step, first in the preprocessor after the device step, turns each
LeRobot depth map into it. Everything after it (the point-cloud step, the encoder) sees metres only, and a
depth map never reaches the RGB backbone. An observation that already holds `observation.depth.<cam>` (an env
or dataset in the plugin's own format) passes through unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from lerobot.configs import FeatureType, PipelineFeatureType, PolicyFeature
from lerobot.configs.video import encoder_config_from_video_info
from lerobot.processor import ObservationProcessorStep, ProcessorStepRegistry

from lerobot_flowstep.constants import OBS_DEPTH_MAP_SUFFIX, OBS_IMAGES_PREFIX, depth_key

REGISTRY_NAME = "flowstep_depth_maps"
# Metres per unit of the depth maps as they reach the policy.
DEPTH_UNITS = {"m": 1.0, "mm": 1e-3}
# The info fields of a depth feature that carry its calibration (OpenCV pinhole, camera-to-world in OpenCV axes).
INTRINSICS_INFO = "camera_intrinsics"
EXTRINSICS_INFO = "camera_to_world"
# Half a millimetre: a map read back in millimetres is rounded to whole millimetres by LeRobot's decoder.
_ROUNDING_M = 5e-4
# Plausible depth for a robot's camera, in metres: a dataset whose depth statistics fall outside is read in the
# wrong unit (1,000 times too large or too small), the classic failure this guards against.
PLAUSIBLE_MAX_DEPTH_M = (0.05, 100.0)


def is_depth_map_feature(feature: dict[str, Any]) -> bool:
    """LeRobot's own test (`LeRobotDatasetMetadata.depth_keys`), on one feature of `meta/info.json`."""
    info = feature.get("info") or {}
    video_info = feature.get("video_info") or {}
    return bool(info.get("is_depth_map") or info.get("video.is_depth_map") or video_info.get("video.is_depth_map"))


def depth_map_camera(key: str) -> str:
    """The camera of a depth-map key: `observation.images.front_depth` -> `front` (LeRobot names a depth stream
    `<cam>_depth`); a key without the suffix names its camera by itself."""
    name = key.removeprefix(OBS_IMAGES_PREFIX)
    return name.removesuffix(OBS_DEPTH_MAP_SUFFIX) or name


@dataclass
class DatasetDepthMap:
    """What a dataset's `info.json` says about one depth-map feature (`dataset_depth_maps` keys it by its key)."""

    camera: str
    shape: tuple[int, int, int]  # (1, H, W), channel first as the policy sees it
    valid_range: list[float]  # [depth_min, depth_max] metres of the quantizer, [] when stored unquantized
    calibration: dict[str, list[list[float]]] | None  # {"intrinsics": 3x3, "extrinsics": 4x4} or None


def dataset_depth_maps(features: dict[str, dict[str, Any]]) -> dict[str, DatasetDepthMap]:
    """Every depth-map feature of a dataset's features (`meta.features`), keyed by its LeRobot key."""
    maps = {}
    for key, feature in features.items():
        if not is_depth_map_feature(feature):
            continue
        info = feature.get("info") or {}
        shape = tuple(feature["shape"])
        names = feature.get("names") or []
        if len(shape) != 3:
            raise ValueError(f"Depth map '{key}' must have 3 dimensions (H, W, 1), got shape {shape}.")
        channel_last = len(names) == 3 and names[2] in ("channel", "channels")
        h, w = (shape[0], shape[1]) if channel_last else (shape[1], shape[2])
        valid_range = []
        if feature.get("dtype") == "video":
            # Read as LeRobot's decoder reads them: its defaults where the info does not say.
            encoder = encoder_config_from_video_info(info)
            valid_range = [float(encoder.depth_min), float(encoder.depth_max)]
        calibration = None
        if INTRINSICS_INFO in info or EXTRINSICS_INFO in info:
            missing = [name for name in (INTRINSICS_INFO, EXTRINSICS_INFO) if name not in info]
            if missing:
                raise ValueError(
                    f"The info of depth map '{key}' has half a calibration: {missing} is missing. Write both with "
                    "`lerobot-flowstep calibrate`."
                )
            calibration = {"intrinsics": info[INTRINSICS_INFO], "extrinsics": info[EXTRINSICS_INFO]}
        maps[key] = DatasetDepthMap(
            camera=depth_map_camera(key),
            shape=(1, h, w),
            valid_range=valid_range,
            calibration=calibration,
        )
    return maps


def check_depth_unit(depth_maps: dict[str, list[float]], unit: str, stats: dict[str, dict] | None) -> None:
    """Refuse a depth unit that does not fit the dataset's depth statistics (which LeRobot rescales to the unit
    it returns frames in): a cloud 1,000 times too large or too small is otherwise made without a word."""
    if not stats:
        return
    scale = DEPTH_UNITS[unit]
    low, high = PLAUSIBLE_MAX_DEPTH_M
    for key in depth_maps:
        if key not in stats or "max" not in stats[key]:
            continue
        deepest = float(torch.as_tensor(stats[key]["max"]).max()) * scale
        if not low <= deepest <= high:
            other = next(u for u in DEPTH_UNITS if u != unit)
            raise ValueError(
                f"The depth map '{key}' reaches {deepest:g} m by the dataset's statistics when read in "
                f"'{unit}' (policy.depth_unit), which no depth camera measures: it is in '{other}'. Set "
                f"--policy.depth_unit to the unit the frames reach the policy in, which for a LeRobotDataset is "
                f"--dataset.depth_output_unit (LeRobot's default 'mm')."
            )


@ProcessorStepRegistry.register(name=REGISTRY_NAME)
@dataclass
class DepthMapProcessorStep(ObservationProcessorStep):
    """Turn each LeRobot depth map of `depth_maps` into `observation.depth.<cam>`: metres, 0 where invalid.

    Attributes:
        depth_maps: {LeRobot key: [depth_min, depth_max] metres of its quantizer, or [] when unquantized}.
        depth_unit: unit of the maps as they arrive, one of `DEPTH_UNITS`.
    """

    depth_maps: dict[str, list[float]] = field(default_factory=dict)
    depth_unit: str = "mm"

    def __post_init__(self) -> None:
        check_depth_map_settings(self.depth_maps, self.depth_unit)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        scale = DEPTH_UNITS[self.depth_unit]
        for key, valid in self.depth_maps.items():
            if key not in observation:
                continue
            depth = torch.as_tensor(observation.pop(key))
            depth = depth.float() * scale if depth.dtype != torch.float32 or scale != 1.0 else depth
            invalid = ~torch.isfinite(depth) | (depth <= 0)
            if valid:
                # The quantizer's ends hold every clipped pixel (no return, too near, too far).
                invalid |= (depth <= valid[0] + _ROUNDING_M) | (depth >= valid[1] - _ROUNDING_M)
            observation[depth_key(depth_map_camera(key))] = depth.masked_fill(invalid, 0.0)
        return observation

    def get_config(self) -> dict[str, Any]:
        return asdict(self)

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        observation = dict(features.get(PipelineFeatureType.OBSERVATION, {}))
        for key in self.depth_maps:
            if key in observation:
                feature = observation.pop(key)
                observation[depth_key(depth_map_camera(key))] = PolicyFeature(FeatureType.STATE, feature.shape)
        return {**features, PipelineFeatureType.OBSERVATION: observation}


def check_depth_map_settings(depth_maps: dict[str, list[float]], unit: str) -> None:
    """The config's depth-map fields, checked where they are set and where the step is rebuilt."""
    if unit not in DEPTH_UNITS:
        raise ValueError(f"depth_unit must be one of {sorted(DEPTH_UNITS)}, got '{unit}'.")
    for key, valid in depth_maps.items():
        if valid and (len(valid) != 2 or not 0 <= valid[0] < valid[1]):
            raise ValueError(f"depth_maps['{key}'] must be [] or [depth_min, depth_max] metres, got {valid}.")
