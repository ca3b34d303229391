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

import torch
from torch import Tensor


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


def in_bounds(points: Tensor, low: Tensor | list[float], high: Tensor | list[float]) -> Tensor:
    """Mask (..., N) of points (..., N, 3) inside the axis-aligned box [low, high]."""
    low_t = torch.as_tensor(low, dtype=points.dtype, device=points.device)
    high_t = torch.as_tensor(high, dtype=points.dtype, device=points.device)
    return ((points >= low_t) & (points <= high_t)).all(dim=-1)


def farthest_point_sample(
    points: Tensor,
    num_samples: int,
    valid: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices (..., num_samples) of a farthest-point subset of points (..., N, 3).

    Deterministic unless a generator is given: the first pick is then a random valid point, otherwise the
    valid point nearest the valid points' centroid. Invalid points are never picked while valid ones
    remain unpicked; with fewer valid points than `num_samples`, valid points repeat. A cloud with no valid
    point at all raises, since any sample would be made of garbage.
    """
    leading = points.shape[:-2]
    n = points.shape[-2]
    flat = points.reshape(-1, n, points.shape[-1])
    batch = flat.shape[0]
    if valid is None:
        valid_flat = torch.ones(batch, n, dtype=torch.bool, device=points.device)
    else:
        valid_flat = valid.reshape(batch, n)
    empty = ~valid_flat.any(dim=-1)
    if bool(empty.any()):
        raise ValueError(
            f"farthest_point_sample: {int(empty.sum())} of {batch} point clouds have no valid point "
            "(all depths invalid or outside the workspace bounds)."
        )

    if generator is not None:
        scores = torch.rand(batch, n, device=points.device, generator=generator)
    else:
        counts = valid_flat.sum(-1, keepdim=True).clamp(min=1)
        centroid = (flat * valid_flat[..., None]).sum(1, keepdim=True) / counts[..., None]
        scores = -((flat - centroid) ** 2).sum(-1)
    current = torch.where(valid_flat, scores, torch.full_like(scores, -torch.inf)).argmax(-1)

    neg_inf = torch.tensor(-torch.inf, device=points.device, dtype=flat.dtype)
    min_dist = torch.where(valid_flat, torch.full_like(scores, torch.inf, dtype=flat.dtype), neg_inf)
    selected = torch.empty(batch, num_samples, dtype=torch.long, device=points.device)
    rows = torch.arange(batch, device=points.device)
    for i in range(num_samples):
        selected[:, i] = current
        chosen = flat[rows, current]
        dist = ((flat - chosen[:, None, :]) ** 2).sum(-1)
        min_dist = torch.minimum(min_dist, dist)
        current = min_dist.argmax(-1)
    return selected.reshape(*leading, num_samples)


def gather_points(points: Tensor, indices: Tensor) -> Tensor:
    """Select points (..., N, C) at indices (..., K) -> (..., K, C)."""
    return torch.gather(points, -2, indices[..., None].expand(*indices.shape, points.shape[-1]))


def fuse_pointcloud(
    depths: list[Tensor],
    intrinsics: list[Tensor],
    extrinsics: list[Tensor],
    num_points: int,
    bounds_low: list[float] | Tensor | None = None,
    bounds_high: list[float] | Tensor | None = None,
    colors: list[Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One world-frame point cloud from several cameras, cropped and down-sampled to `num_points`.

    depths[i]: (..., H_i, W_i) or (..., 1, H_i, W_i); intrinsics[i]: (..., 3, 3); extrinsics[i]:
    (..., 4, 4) camera-to-world; colors[i] (optional): (..., 3, H_i, W_i) in [0, 1].
    Returns (..., num_points, 3), or (..., num_points, 6) with colour.
    """
    all_points, all_valid, all_colors = [], [], []
    for i, depth in enumerate(depths):
        if depth.ndim >= 3 and depth.shape[-3] == 1:
            depth = depth.squeeze(-3)
        points, valid = depth_to_world_points(depth, intrinsics[i], extrinsics[i])
        if bounds_low is not None and bounds_high is not None:
            valid = valid & in_bounds(points, bounds_low, bounds_high)
        all_points.append(points)
        all_valid.append(valid)
        if colors is not None:
            all_colors.append(colors[i].flatten(-2).transpose(-1, -2))
    points = torch.cat(all_points, dim=-2)
    valid = torch.cat(all_valid, dim=-1)
    features = torch.cat([points, torch.cat(all_colors, dim=-2)], dim=-1) if colors is not None else points
    indices = farthest_point_sample(points, num_points, valid, generator=generator)
    return gather_points(features, indices)
