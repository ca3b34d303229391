"""Point-cloud processor step: depth maps + camera parameters -> one world-frame point cloud.

It sits in the policy preprocessor before normalization (the geometry needs metric depth), is saved in
`policy_preprocessor.json` under the registry name `flowstep_pointcloud`, and is rebuilt from there by
`from_pretrained` and `lerobot-eval` once `lerobot_flowstep` is imported (LeRobot's plugin discovery does
that). Camera parameters come per frame from the observation (a wrist camera moves) or, for cameras
listed in `fixed_cameras`, from the step's own config.

The cloud is made by `geometry.fuse_pointcloud`, the one function the converters and envs use too. Where
the observation already holds `observation.pointcloud` (a dataset converted with stored clouds), the
step passes it through, so training skips the work; evaluation then makes the same cloud online.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from lerobot.configs import FeatureType, PipelineFeatureType, PolicyFeature
from lerobot.processor import ObservationProcessorStep, ProcessorStepRegistry
from torch import Tensor

from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.core.config_errors import command_line_errors
from lerobot_flowstep.core.geometry import FPS_BACKENDS, PixelRayCache, check_camera_parameters, fuse_pointcloud

REGISTRY_NAME = "flowstep_pointcloud"


@command_line_errors
@dataclass
class PointCloudConfig:
    """Which cameras to fuse into `observation.pointcloud` and how; `cameras=[]` disables the step.

    Attributes:
        cameras: camera names; depth is read from `observation.depth.<cam>`.
        num_points: size of the farthest-point-sampled cloud.
        use_rgb: append the colour of `observation.images.<cam>` (in [0, 1]) to every point.
        bounds_low, bounds_high: workspace box (world frame); points outside are dropped before sampling.
        fixed_cameras: {cam: {"intrinsics": 3x3, "extrinsics": 4x4 camera-to-world}} for static cameras
            whose parameters are not in the observation.
        voxel_size: side (metres) of the voxel grid that first reduces the cropped cloud to one point (the
            mean) per voxel, before farthest-point sampling; None samples the cropped cloud directly.
        sampler: farthest-point sampler, one of `geometry.FPS_BACKENDS`: "auto" uses fpsample's QuickFPS on
            the CPU and the exact batched torch loop elsewhere.
    """

    cameras: list[str] = field(default_factory=list)
    num_points: int = 512
    use_rgb: bool = False
    bounds_low: list[float] | None = None
    bounds_high: list[float] | None = None
    fixed_cameras: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    voxel_size: float | None = None
    sampler: str = "auto"

    def __post_init__(self) -> None:
        if self.num_points < 1:
            raise ValueError(f"pointcloud.num_points must be >= 1, got {self.num_points}.")
        if (self.bounds_low is None) != (self.bounds_high is None):
            raise ValueError("Give both pointcloud.bounds_low and pointcloud.bounds_high, or neither.")
        for name, bound in (("bounds_low", self.bounds_low), ("bounds_high", self.bounds_high)):
            if bound is not None and len(bound) != 3:
                raise ValueError(f"pointcloud.{name} must hold 3 numbers (x, y, z), got {bound}.")
        if self.bounds_low is not None and self.bounds_high is not None:
            pairs = list(zip(self.bounds_low, self.bounds_high, strict=True))
            # NaN compares false, so it would drop every point like an inverted box: every cloud constant.
            if any(not low <= high for low, high in pairs):
                raise ValueError(
                    f"pointcloud.bounds_low {self.bounds_low} must be <= bounds_high {self.bounds_high} on every axis "
                    "(and neither NaN): this box holds no point, so every cloud would be the same filler."
                )
        if self.voxel_size is not None and not self.voxel_size > 0:
            raise ValueError(f"pointcloud.voxel_size must be > 0 metres or null, got {self.voxel_size}.")
        if self.sampler not in FPS_BACKENDS:
            raise ValueError(f"pointcloud.sampler must be one of {FPS_BACKENDS}, got '{self.sampler}'.")
        for cam, params in self.fixed_cameras.items():
            for name, shape in (("intrinsics", (3, 3)), ("extrinsics", (4, 4))):
                if name not in params or tuple(torch.as_tensor(params[name]).shape) != shape:
                    raise ValueError(f"pointcloud.fixed_cameras['{cam}'] needs '{name}' of shape {shape}.")
            check_camera_parameters(
                [torch.as_tensor(params["intrinsics"], dtype=torch.float64)],
                [torch.as_tensor(params["extrinsics"], dtype=torch.float64)],
                [f"{cam} (pointcloud.fixed_cameras)"],
            )

    @property
    def enabled(self) -> bool:
        return bool(self.cameras)

    @property
    def feature(self) -> PolicyFeature:
        return PolicyFeature(type=FeatureType.STATE, shape=(self.num_points, 6 if self.use_rgb else 3))

    @property
    def empty_fill(self) -> list[float]:
        """Where an empty frame's cloud is put: the centre of the workspace bounds, else the world origin."""
        if self.bounds_low is None or self.bounds_high is None:
            return [0.0, 0.0, 0.0]
        return [(low + high) / 2 for low, high in zip(self.bounds_low, self.bounds_high, strict=True)]

    def fuse(self, depths, intrinsics, extrinsics, colors=None, ray_cache: PixelRayCache | None = None, **kwargs):
        """`geometry.fuse_pointcloud` with these settings; depths (..., H, W) per camera of `cameras`."""
        return fuse_pointcloud(
            depths,
            intrinsics,
            extrinsics,
            num_points=self.num_points,
            bounds_low=self.bounds_low,
            bounds_high=self.bounds_high,
            colors=colors if self.use_rgb else None,
            voxel_size=self.voxel_size,
            backend=self.sampler,
            camera_names=self.cameras,
            ray_cache=ray_cache,
            **kwargs,
        )


def fused_pointclouds(
    depths: Sequence[np.ndarray],
    intrinsics: Sequence[np.ndarray],
    extrinsics: Sequence[np.ndarray],
    pointcloud: PointCloudConfig,
    colors: Sequence[np.ndarray] | None = None,
    empty_fill: Sequence[float] | None = None,
) -> np.ndarray:
    """(T, num_points, 3 or 6) float32 clouds from per-camera depths (T, H, W) metres, OpenCV intrinsics
    (T, 3, 3), camera-to-world extrinsics (T, 4, 4) and optional colours (T, H, W, 3) uint8: numpy in and out
    around `PointCloudConfig.fuse`, the processor step's own function, for dataset writers that store the
    cloud. A frame with no point inside the bounds raises, unless `empty_fill` is given (see
    `lerobot_flowstep.core.geometry.fuse_pointcloud`)."""

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    clouds = pointcloud.fuse(
        [tensor(d) for d in depths],
        [tensor(k) for k in intrinsics],
        [tensor(t) for t in extrinsics],
        colors=[tensor(c).permute(0, 3, 1, 2) / 255.0 for c in colors] if colors is not None else None,
        empty_fill=empty_fill,
    )
    return clouds.numpy().astype(np.float32, copy=False)


def _align_time(
    depths: list[Tensor], intrinsics: list[Tensor], extrinsics: list[Tensor], colors: list[Tensor]
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """Give every input the same frame dimensions. LeRobot drops the time dimension of a video frame queried at
    a single timestamp (n_obs_steps=1) but keeps it for parquet columns, so a batch may hold a depth video
    (B, H, W) beside per-frame parameters (B, 1, 3, 3) or PNG colours (B, 1, 3, H, W): the missing time
    dimension is put back after the batch one. Fixed cameras' unbatched parameters broadcast as they are."""
    frames = [d.ndim - 2 for d in depths] + [m.ndim - 2 for m in (*intrinsics, *extrinsics)]
    frames += [c.ndim - 3 for c in colors]
    target = max(frames)

    def aligned(x: Tensor, trailing: int) -> Tensor:
        return x.unsqueeze(1) if x.ndim - trailing == target - 1 and x.ndim > trailing else x

    return (
        [aligned(d, 2) for d in depths],
        [aligned(m, 2) for m in intrinsics],
        [aligned(m, 2) for m in extrinsics],
        [aligned(c, 3) for c in colors],
    )


@ProcessorStepRegistry.register(name=REGISTRY_NAME)
@dataclass
class PointCloudProcessorStep(PointCloudConfig, ObservationProcessorStep):
    """Fuse the depth maps of `cameras` into `observation.pointcloud` (..., num_points, 3 or 6)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.cameras:
            raise ValueError("PointCloudProcessorStep needs at least one camera in `cameras`.")
        # Not dataclass fields, so neither saved nor compared: work done once, reused by every call.
        self._ray_cache = PixelRayCache()
        self._fixed_parameters: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _fixed(self, camera: str, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (camera, like.device, like.dtype)
        if key not in self._fixed_parameters:
            params = self.fixed_cameras[camera]
            self._fixed_parameters[key] = tuple(
                torch.as_tensor(params[name], device=like.device, dtype=like.dtype)
                for name in ("intrinsics", "extrinsics")
            )
        return self._fixed_parameters[key]

    def _camera_parameters(self, observation: dict[str, Any], camera: str, like: Tensor) -> list[Tensor]:
        params = []
        for index, key in enumerate((intrinsics_key(camera), extrinsics_key(camera))):
            if key in observation:
                params.append(torch.as_tensor(observation[key], device=like.device, dtype=like.dtype))
            elif camera in self.fixed_cameras:
                # Unbatched: broadcasting carries a static camera over every frame.
                params.append(self._fixed(camera, like)[index])
            else:
                raise ValueError(
                    f"PointCloudProcessorStep: no camera parameters for '{depth_key(camera)}': the observation "
                    f"has no '{key}' and fixed_cameras has no entry for camera '{camera}'."
                )
        return params

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        if OBS_POINTCLOUD in observation:
            return self._check_stored(observation)
        depths, intrinsics, extrinsics, colors = [], [], [], []
        for camera in self.cameras:
            key = depth_key(camera)
            if key not in observation:
                raise KeyError(
                    f"PointCloudProcessorStep: '{key}' is missing from the observation "
                    f"(available: {sorted(k for k in observation if k.startswith('observation.'))})."
                )
            depth = torch.as_tensor(observation[key]).float()
            if depth.ndim < 3 or depth.shape[-3] != 1:
                raise ValueError(f"'{key}' must have shape (..., 1, H, W), got {tuple(depth.shape)}.")
            k, t = self._camera_parameters(observation, camera, depth)
            depths.append(depth.squeeze(-3))
            intrinsics.append(k)
            extrinsics.append(t)
            if self.use_rgb:
                if rgb_key(camera) not in observation:
                    raise KeyError(f"PointCloudProcessorStep(use_rgb=True): '{rgb_key(camera)}' is missing.")
                colors.append(torch.as_tensor(observation[rgb_key(camera)]).to(depth))
        depths, intrinsics, extrinsics, colors = _align_time(depths, intrinsics, extrinsics, colors)
        observation[OBS_POINTCLOUD] = self.fuse(
            depths, intrinsics, extrinsics, colors=colors, ray_cache=self._ray_cache, empty_fill=self.empty_fill
        )
        return observation

    def _check_stored(self, observation: dict[str, Any]) -> dict[str, Any]:
        """A cloud already in the observation (stored in the dataset) is used as it is, if it has this step's
        shape: its points were made by the same `fuse_pointcloud`, from the same depth."""
        cloud = observation[OBS_POINTCLOUD]
        expected = tuple(self.feature.shape)
        if tuple(cloud.shape[-2:]) != expected:
            raise ValueError(
                f"'{OBS_POINTCLOUD}' in the observation has shape {tuple(cloud.shape)}, but this policy's point-cloud "
                f"step makes (..., {expected[0]}, {expected[1]}) (pointcloud.num_points={self.num_points}, "
                f"use_rgb={self.use_rgb}). Store the dataset's clouds with the same settings, or drop them."
            )
        return observation

    def get_config(self) -> dict[str, Any]:
        return asdict(self)

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        observation = dict(features.get(PipelineFeatureType.OBSERVATION, {}))
        observation[OBS_POINTCLOUD] = self.feature
        return {**features, PipelineFeatureType.OBSERVATION: observation}
