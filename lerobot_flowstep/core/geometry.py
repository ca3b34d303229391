"""Camera geometry: depth maps to world-frame point clouds, cropping and farthest-point sampling.

Conventions (shared by the point-cloud processor step, the embedded env's renderer and the converters):
- pixels are indexed (u, v) = (column, row) at integer positions, as RLBench/PyRep do;
- intrinsics are pinhole matrices with the OpenCV axes (x right, y down, z forward); a camera whose
  matrix has negative focal lengths (RLBench) must be converted first (`flip_negative_focal`);
- extrinsics are camera-to-world 4x4 transforms;
- depth is the z coordinate in the camera frame (not the ray length), in metres.

All functions are batched over arbitrary leading dimensions and run on any torch device.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)


def camera_rays(intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Directions through every pixel in the camera frame, scaled so that z = 1.

    intrinsics: (..., 3, 3). Returns (..., H, W, 3).
    """
    device, dtype = intrinsics.device, intrinsics.dtype
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    fx = intrinsics[..., 0, 0, None, None]
    fy = intrinsics[..., 1, 1, None, None]
    cx = intrinsics[..., 0, 2, None, None]
    cy = intrinsics[..., 1, 2, None, None]
    skew = intrinsics[..., 0, 1, None, None]
    y = (v - cy) / fy
    x = (u - cx - skew * y) / fx
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def look_at_extrinsics(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """Camera-to-world transform of an OpenCV camera (x right, y down, z forward) at eye facing target."""
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - np.asarray(eye, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    transform = np.eye(4)
    transform[:3, 0], transform[:3, 1], transform[:3, 2] = right, down, forward
    transform[:3, 3] = eye
    return transform


def depth_to_camera_points(depth: Tensor, intrinsics: Tensor) -> Tensor:
    """Back-project a depth map (..., H, W) into camera-frame points (..., H, W, 3)."""
    height, width = depth.shape[-2:]
    return camera_rays(intrinsics, height, width) * depth[..., None]


def transform_points(points: Tensor, transform: Tensor) -> Tensor:
    """Apply a homogeneous transform (..., 4, 4) to points (..., N, 3)."""
    rotation = transform[..., :3, :3]
    translation = transform[..., :3, 3]
    return points @ rotation.transpose(-1, -2) + translation[..., None, :]


def invert_transform(transform: Tensor) -> Tensor:
    """Inverse of a rigid transform (..., 4, 4) without a general matrix inverse."""
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    inverse = torch.zeros_like(transform)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3] = -(rotation_t @ transform[..., :3, 3, None])[..., 0]
    inverse[..., 3, 3] = 1.0
    return inverse


def project_points(points: Tensor, intrinsics: Tensor, cam_to_world: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points (..., N, 3) into a camera. Returns pixel coordinates (..., N, 2) and depth (..., N)."""
    cam_points = transform_points(points, invert_transform(cam_to_world))
    z = cam_points[..., 2]
    homogeneous = cam_points @ intrinsics.transpose(-1, -2)
    return homogeneous[..., :2] / z[..., None], z


def depth_to_world_points(depth: Tensor, intrinsics: Tensor, cam_to_world: Tensor) -> tuple[Tensor, Tensor]:
    """World-frame points (..., H*W, 3) of a depth map and their validity mask (..., H*W).

    A pixel is valid when its depth is finite and positive.
    """
    cam_points = depth_to_camera_points(torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0), intrinsics)
    cam_points = cam_points.flatten(-3, -2)
    world = transform_points(cam_points, cam_to_world)
    valid = (torch.isfinite(depth) & (depth > 0)).flatten(-2)
    return world, valid


def flip_negative_focal(intrinsics: Tensor, cam_to_world: Tensor) -> tuple[Tensor, Tensor]:
    """Rewrite a camera whose focal lengths are negative (RLBench/CoppeliaSim) in the OpenCV convention.

    Negating fx (fy) mirrors the camera's x (y) axis; negating the matching column of the rotation
    describes the same rays, so back-projected points are unchanged.
    """
    intrinsics = intrinsics.clone()
    cam_to_world = cam_to_world.clone()
    for axis in (0, 1):
        sign = torch.sign(intrinsics[..., axis, axis])
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        intrinsics[..., axis, axis] = intrinsics[..., axis, axis] * sign
        cam_to_world[..., :3, axis] = cam_to_world[..., :3, axis] * sign[..., None]
    return intrinsics, cam_to_world


def in_bounds(points: Tensor, low: Tensor | Sequence[float], high: Tensor | Sequence[float]) -> Tensor:
    """Mask (..., N) of points (..., N, 3) inside the axis-aligned box [low, high]."""
    low_t = torch.as_tensor(low, dtype=points.dtype, device=points.device)
    high_t = torch.as_tensor(high, dtype=points.dtype, device=points.device)
    return ((points >= low_t) & (points <= high_t)).all(dim=-1)


class PixelRayCache:
    """Camera-frame pixel rays (z = 1), computed once per (intrinsics, image size) and reused.

    Static cameras send the same intrinsics every frame, so back-projection reduces to one multiply-add
    per pixel. The cache compares intrinsics by value on the CPU only: on an accelerator the comparison
    would wait for the device on every call, while recomputing the rays there is one small kernel.
    Rays are planar, (3, H*W): the rotation and the crop then run over contiguous rows.
    """

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._rays: OrderedDict[tuple, Tensor] = OrderedDict()

    def rays(self, intrinsics: Tensor, height: int, width: int) -> Tensor:
        """Rays (3, H*W) when every frame of intrinsics (..., 3, 3) is the same camera, else (..., 3, H*W)."""
        if intrinsics.device.type != "cpu":
            return planar_rays(intrinsics, height, width)
        flat = intrinsics.reshape(-1, 9)
        if not torch.equal(flat, flat[:1].expand_as(flat)):
            return planar_rays(intrinsics, height, width)
        key = (height, width, intrinsics.dtype, tuple(flat[0].tolist()))
        rays = self._rays.get(key)
        if rays is None:
            rays = planar_rays(flat[0].reshape(3, 3), height, width)
            self._rays[key] = rays
            if len(self._rays) > self.max_entries:
                self._rays.popitem(last=False)
        else:
            self._rays.move_to_end(key)
        return rays


def planar_rays(intrinsics: Tensor, height: int, width: int) -> Tensor:
    """`camera_rays` laid out as (..., 3, H*W)."""
    return camera_rays(intrinsics, height, width).flatten(-3, -2).transpose(-1, -2).contiguous()


def camera_parameters_ok(intrinsics: Sequence[Tensor], extrinsics: Sequence[Tensor]) -> Tensor:
    """A boolean scalar tensor, still on the device: every camera's parameters are finite with non-zero focal
    lengths. `fuse_pointcloud` reads it with its one synchronisation; `check_camera_parameters` raises."""
    values = torch.cat([p.reshape(-1) for p in (*intrinsics, *extrinsics)])
    focals = torch.cat([k[..., [0, 1], [0, 1]].reshape(-1) for k in intrinsics])
    return torch.isfinite(values).all() & (focals != 0).all()


def check_camera_parameters(
    intrinsics: Sequence[Tensor], extrinsics: Sequence[Tensor], camera_names: Sequence[str]
) -> None:
    """Raise, naming the camera, when its intrinsics or extrinsics hold NaN/inf or a zero focal length.

    Such parameters back-project every pixel to NaN or infinity, which would silently become NaN actions.
    """
    if bool(camera_parameters_ok(intrinsics, extrinsics)):
        return
    problems = []
    for name, k, t in zip(camera_names, intrinsics, extrinsics, strict=True):
        what = []
        if not torch.isfinite(k).all():
            what.append("intrinsics hold NaN or inf")
        elif not (k[..., [0, 1], [0, 1]] != 0).all():
            what.append("intrinsics have a zero focal length")
        if not torch.isfinite(t).all():
            what.append("extrinsics hold NaN or inf")
        if what:
            problems.append(f"camera '{name}': {', '.join(what)}")
    raise ValueError("Bad camera parameters, no point cloud can be made: " + "; ".join(problems) + ".")


def voxel_downsample(points: Tensor, voxel_size: float) -> Tensor:
    """One point per occupied voxel of a (N, C) cloud: the mean of its points (xyz and any extra channels).

    The voxels are cubes of side `voxel_size` on a grid anchored at the world origin, as open3d's
    `voxel_down_sample` does; the output is ordered by voxel, so the result is deterministic.
    """
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}.")
    if points.shape[0] == 0:
        return points
    cells = torch.floor(points[:, :3] * (1.0 / voxel_size)).to(torch.int64)
    cells = cells - cells.min(dim=0).values
    extent = cells.max(dim=0).values + 1
    keys = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
    if points.device.type == "cpu" and int(extent.prod()) < 2**31:
        keys = keys.to(torch.int32)  # sorting 32-bit keys is about a third faster on the CPU
    unique, inverse = torch.unique(keys, return_inverse=True)
    sums = torch.zeros(unique.shape[0], points.shape[1], dtype=points.dtype, device=points.device)
    sums.index_add_(0, inverse, points)
    counts = torch.bincount(inverse, minlength=unique.shape[0]).to(points.dtype)
    return sums / counts[:, None]


FPS_BACKENDS = ("auto", "fpsample", "torch")


def fpsample_available() -> bool:
    return importlib.util.find_spec("fpsample") is not None


def resolve_fps_backend(backend: str, device: torch.device) -> str:
    """The sampler that `backend` means for clouds on `device`: "auto" takes fpsample's QuickFPS on the
    CPU when it is installed, and the batched torch loop otherwise (any device)."""
    if backend not in FPS_BACKENDS:
        raise ValueError(f"FPS backend must be one of {FPS_BACKENDS}, got '{backend}'.")
    if backend == "auto":
        return "fpsample" if device.type == "cpu" and fpsample_available() else "torch"
    if backend == "fpsample":
        if not fpsample_available():
            raise ImportError("FPS backend 'fpsample' needs the fpsample package: pip install fpsample.")
        if device.type != "cpu":
            raise ValueError(f"FPS backend 'fpsample' runs on the CPU; the points are on {device}. Use 'torch'.")
    return backend


def farthest_point_sample(
    points: Tensor,
    num_samples: int,
    valid: Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "torch",
) -> Tensor:
    """Indices (..., num_samples) of a farthest-point subset of points (..., N, 3).

    Deterministic unless a generator is given: the first pick is then a random valid point, otherwise the
    valid point nearest the valid points' centroid (torch) or the first valid point (fpsample). Invalid points
    are never picked while valid ones remain unpicked; with fewer valid points than `num_samples`, valid
    points repeat. A cloud with no valid point at all raises, since any sample would be made of garbage.

    backend "torch" is exact FPS, batched, on any device (one step per sample); "fpsample" is fpsample's
    bucket QuickFPS on the CPU, one cloud at a time, much faster on large clouds; "auto" picks.
    """
    leading = points.shape[:-2]
    n = points.shape[-2]
    flat = points.reshape(-1, n, points.shape[-1])
    batch = flat.shape[0]
    valid_flat = (
        torch.ones(batch, n, dtype=torch.bool, device=points.device) if valid is None else valid.reshape(batch, n)
    )
    empty = ~valid_flat.any(dim=-1)
    if bool(empty.any()):
        raise ValueError(
            f"farthest_point_sample: {int(empty.sum())} of {batch} point clouds have no valid point "
            "(all depths invalid or outside the workspace bounds)."
        )
    if resolve_fps_backend(backend, points.device) == "fpsample":
        selected = torch.stack(
            [
                valid_flat[b].nonzero()[:, 0][_fpsample_indices(flat[b][valid_flat[b]], num_samples, generator)]
                for b in range(batch)
            ]
        )
        return selected.reshape(*leading, num_samples)

    current = _start_indices(flat, valid_flat, generator)
    neg_inf = torch.tensor(-torch.inf, device=points.device, dtype=flat.dtype)
    min_dist = torch.where(
        valid_flat, torch.full(valid_flat.shape, torch.inf, dtype=flat.dtype, device=points.device), neg_inf
    )
    selected = torch.empty(batch, num_samples, dtype=torch.long, device=points.device)
    rows = torch.arange(batch, device=points.device)
    for i in range(num_samples):
        selected[:, i] = current
        chosen = flat[rows, current]
        dist = ((flat - chosen[:, None, :]) ** 2).sum(-1)
        min_dist = torch.minimum(min_dist, dist)
        current = min_dist.argmax(-1)
    return selected.reshape(*leading, num_samples)


def _start_indices(flat: Tensor, valid: Tensor, generator: torch.Generator | None) -> Tensor:
    """(B,) first FPS pick: a random valid point with a generator, else the valid point nearest the centroid."""
    if generator is not None:
        scores = torch.rand(valid.shape, device=flat.device, generator=generator)
    else:
        counts = valid.sum(-1, keepdim=True).clamp(min=1)
        centroid = (flat * valid[..., None]).sum(1, keepdim=True) / counts[..., None]
        scores = -((flat - centroid) ** 2).sum(-1)
    return torch.where(valid, scores, torch.full_like(scores, -torch.inf)).argmax(-1)


def _fpsample_indices(points: Tensor, num_samples: int, generator: torch.Generator | None) -> Tensor:
    """FPS indices (num_samples,) into one compact CPU cloud (n, >=3) with fpsample's bucket QuickFPS."""
    import fpsample  # optional at import time: the torch loop works without it

    n = points.shape[0]
    if n <= num_samples:
        # Every point is kept; the encoder is order invariant, so repeat them to the fixed size.
        return torch.arange(num_samples) % n
    xyz = points[:, :3]
    # The first point is as good a deterministic start as any for FPS (the coverage it reaches varies by about
    # 1 % with the start), and free; the centroid rule of the torch loop costs a pass over the cloud.
    start = int(torch.randint(n, (1,), generator=generator)) if generator is not None else 0
    # KD-tree height: fpsample suggests 3 for small workloads and 5-7 for large ones (measured fastest here
    # at about 15k points with 5, 45k with 7).
    height = max(1, min(7, n.bit_length() - 9))
    indices = fpsample.bucket_fps_kdline_sampling(
        xyz.detach().contiguous().numpy().astype(np.float32, copy=False), num_samples, h=height, start_idx=start
    )
    return torch.from_numpy(indices.astype(np.int64))


def coverage_radius(points: Tensor, samples: Tensor, chunk: int = 256) -> float:
    """Largest distance from any of points (N, 3) to its nearest sample (K, 3): how well a down-sampled cloud
    covers the original (farthest-point sampling greedily minimizes it)."""
    nearest = torch.full((points.shape[0],), torch.inf, dtype=points.dtype, device=points.device)
    for part in samples.split(chunk):
        nearest = torch.minimum(nearest, torch.cdist(points, part).min(dim=1).values)
    return float(nearest.max())


def _batched_torch_fps(
    features: Tensor, valid: Tensor, longest: int, num_points: int, generator: torch.Generator | None
) -> Tensor:
    """Exact FPS of frames (B, C, N), each with a valid point, in one batched loop (a few kernels per sampled
    point for the whole batch, which is what an accelerator needs), over the clouds compacted to the longest
    frame's valid count. Returns (B, num_points, C)."""
    width = features.shape[1]
    # Valid points first (a stable sort keeps their order), then cut at the longest frame's count.
    order = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)[:, :longest]
    compact = torch.gather(features, 2, order[:, None, :].expand(-1, width, -1)).transpose(1, 2)
    indices = farthest_point_sample(
        compact[..., :3], num_points, torch.gather(valid, 1, order), generator=generator, backend="torch"
    )
    return gather_points(compact, indices)


def _floats(values: Sequence[float] | Tensor) -> list[float]:
    return values.tolist() if isinstance(values, Tensor) else [float(v) for v in values]


def gather_points(points: Tensor, indices: Tensor) -> Tensor:
    """Select points (..., N, C) at indices (..., K) -> (..., K, C)."""
    return torch.gather(points, -2, indices[..., None].expand(*indices.shape, points.shape[-1]))


def fuse_pointcloud(
    depths: Sequence[Tensor],
    intrinsics: Sequence[Tensor],
    extrinsics: Sequence[Tensor],
    num_points: int,
    bounds_low: Sequence[float] | Tensor | None = None,
    bounds_high: Sequence[float] | Tensor | None = None,
    colors: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    voxel_size: float | None = None,
    backend: str = "auto",
    camera_names: Sequence[str] | None = None,
    ray_cache: PixelRayCache | None = None,
    empty_fill: Sequence[float] | None = None,
) -> Tensor:
    """One world-frame point cloud from several cameras: back-projected, cropped to the bounds, reduced to
    one point per `voxel_size` voxel (when given), then down-sampled to `num_points` by farthest-point
    sampling. The point-cloud processor step, the converters and the envs all make their clouds here.

    depths[i]: (..., H_i, W_i) metres (no channel dimension); intrinsics[i]: (..., 3, 3) OpenCV; extrinsics[i]:
    (..., 4, 4) camera-to-world; colors[i] (optional): (..., 3, H_i, W_i) in [0, 1].
    Returns (..., num_points, 3), or (..., num_points, 6) with colour.

    Camera parameters with NaN, inf or a zero focal length raise, naming the camera (`camera_names`).
    A frame with no valid point inside the bounds raises, unless `empty_fill` (xyz) is given: that frame's
    cloud is then `num_points` copies of that point (black), and a warning is logged.
    """
    names = list(camera_names) if camera_names is not None else [f"#{i}" for i in range(len(depths))]
    parameters_ok = camera_parameters_ok(intrinsics, extrinsics)
    all_points, all_depths, all_colors = [], [], []
    for i, depth in enumerate(depths):
        height, width = depth.shape[-2:]
        frames = depth.shape[:-2]
        if torch.broadcast_shapes(frames, intrinsics[i].shape[:-2], extrinsics[i].shape[:-2]) != frames:
            raise ValueError(
                f"camera '{names[i]}': depth {tuple(depth.shape)} must be (..., H, W) with the frame dimensions of its "
                f"intrinsics {tuple(intrinsics[i].shape)} and extrinsics {tuple(extrinsics[i].shape)} (or none for a "
                "fixed camera); a depth map with a channel dimension needs .squeeze(-3)."
            )
        k = intrinsics[i].to(depth.dtype)
        rays = ray_cache.rays(k, height, width) if ray_cache is not None else planar_rays(k, height, width)
        pose = extrinsics[i].to(depth.dtype)
        flat_depth = depth.flatten(-2)
        # t + depth * (R ray), planar (..., 3, H*W): the rotation turns the (cached) rays, not every point.
        all_points.append(torch.addcmul(pose[..., :3, 3:], pose[..., :3, :3] @ rays, flat_depth[..., None, :]))
        all_depths.append(flat_depth)
        if colors is not None:
            all_colors.append(colors[i].to(depth.dtype).flatten(-2))
    points = torch.cat(all_points, dim=-1)
    flat_depth = torch.cat(all_depths, dim=-1)
    valid = torch.isfinite(flat_depth) & (flat_depth > 0)
    if bounds_low is not None and bounds_high is not None:
        for axis, (low, high) in enumerate(zip(_floats(bounds_low), _floats(bounds_high), strict=True)):
            coordinate = points[..., axis, :]
            valid = valid & (coordinate >= low) & (coordinate <= high)
    features = points if colors is None else torch.cat([points, torch.cat(all_colors, dim=-1).expand_as(points)], -2)
    leading = features.shape[:-2]
    width = features.shape[-2]
    features = features.reshape(-1, *features.shape[-2:])
    valid = valid.expand(*leading, valid.shape[-1]).reshape(-1, valid.shape[-1])
    # One device synchronisation for the camera check and every frame's compaction.
    *counts, good = torch.cat([valid.sum(-1), parameters_ok.long().reshape(1)]).tolist()
    if not good:
        check_camera_parameters(intrinsics, extrinsics, names)
    empty = [b for b, count in enumerate(counts) if count == 0]
    if empty and empty_fill is None:
        raise ValueError(
            f"{len(empty)} of {len(counts)} frames (flat indices {empty[:10]}) have no valid depth point of "
            f"cameras {names}" + (" inside the bounds." if bounds_low is not None else ".")
        )
    clouds = torch.zeros(len(counts), num_points, width, dtype=features.dtype, device=features.device)
    if empty:
        logger.warning(
            "Point cloud: %d of %d frames have no valid depth point of cameras %s inside the bounds; their cloud "
            "is %d copies of %s.",
            len(empty),
            len(counts),
            names,
            num_points,
            list(empty_fill),
        )
        clouds[empty, :, :3] = torch.as_tensor(empty_fill, dtype=features.dtype, device=features.device)
    rows = [b for b, count in enumerate(counts) if count > 0]
    sampler = resolve_fps_backend(backend, features.device)
    if sampler == "torch" and not voxel_size:
        if rows:
            clouds[rows] = _batched_torch_fps(features[rows], valid[rows], max(counts), num_points, generator)
        return clouds.reshape(*leading, num_points, width)
    for b in rows:
        cloud = features[b].index_select(1, valid[b].nonzero().squeeze(1)).T.contiguous()  # (n, C)
        if voxel_size:
            cloud = voxel_downsample(cloud, voxel_size)
        if sampler == "fpsample":
            indices = _fpsample_indices(cloud, num_points, generator)
        else:
            indices = farthest_point_sample(cloud[:, :3], num_points, generator=generator, backend="torch")
        clouds[b] = cloud[indices.to(cloud.device)]
    return clouds.reshape(*leading, num_points, width)
