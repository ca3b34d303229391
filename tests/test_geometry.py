import math

import numpy as np
import pytest
import torch

from lerobot_flowstep.core.geometry import (
    camera_rays,
    depth_to_world_points,
    farthest_point_sample,
    flip_negative_focal,
    fuse_pointcloud,
    in_bounds,
    invert_transform,
    project_points,
    transform_points,
)


def _look_at(eye, target):
    """Camera-to-world for an OpenCV camera at `eye` looking at `target` (world z up)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return torch.tensor(pose, dtype=torch.float64)


K = torch.tensor([[40.0, 0.0, 15.5], [0.0, 40.0, 11.5], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _depth_of_plane_z0(intrinsics, cam_to_world, h, w):
    """Analytic depth (camera z) of the world plane z = 0, by intersecting each pixel's ray with it."""
    rays_cam = camera_rays(intrinsics, h, w).reshape(-1, 3)
    rot, origin = cam_to_world[:3, :3], cam_to_world[:3, 3]
    rays_world = rays_cam @ rot.T
    scale = -origin[2] / rays_world[:, 2]  # ray z-component of camera-z-normalised rays
    return scale.reshape(h, w)


def test_back_projection_of_a_plane_at_known_depth():
    depth = torch.full((24, 32), 2.5, dtype=torch.float64)
    points, valid = depth_to_world_points(depth, K, torch.eye(4, dtype=torch.float64))
    assert valid.all()
    assert torch.allclose(points[:, 2], torch.full_like(points[:, 2], 2.5))
    # Pixel (u, v) lands at ((u - cx) z / fx, (v - cy) z / fy).
    u, v = 7, 3
    p = points[v * 32 + u]
    assert p[0].item() == pytest.approx((u - 15.5) * 2.5 / 40.0)
    assert p[1].item() == pytest.approx((v - 11.5) * 2.5 / 40.0)


def test_tilted_camera_sees_the_ground_on_the_ground_and_projection_inverts_back_projection():
    pose = _look_at([0.3, -1.5, 2.0], [0.0, 0.0, 0.0])
    depth = _depth_of_plane_z0(K, pose, 24, 32)
    points, valid = depth_to_world_points(depth, K, pose)
    assert valid.all()
    assert points[:, 2].abs().max().item() < 1e-9
    pixels, z = project_points(points, K, pose)
    v, u = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    assert torch.allclose(pixels, torch.stack([u, v], -1).reshape(-1, 2).double(), atol=1e-8)
    assert torch.allclose(z, depth.reshape(-1))


def test_invalid_depths_are_flagged():
    depth = torch.tensor([[1.0, 0.0], [float("nan"), -2.0]])
    _, valid = depth_to_world_points(depth, K.float(), torch.eye(4))
    assert valid.tolist() == [True, False, False, False]


def test_transforms_compose_with_their_inverse():
    pose = _look_at([1.0, 2.0, 3.0], [0.0, 0.5, 0.0])
    pts = torch.randn(10, 3, dtype=torch.float64)
    assert torch.allclose(transform_points(transform_points(pts, pose), invert_transform(pose)), pts)
    assert torch.allclose(invert_transform(pose), torch.linalg.inv(pose))


def test_negative_focal_cameras_give_the_same_points_after_conversion():
    pose = _look_at([0.3, -1.5, 2.0], [0.0, 0.0, 0.0])
    depth = _depth_of_plane_z0(K, pose, 24, 32)
    expected, _ = depth_to_world_points(depth, K, pose)
    # The same camera described with negative focal lengths and mirrored x / y axes.
    k_neg, pose_neg = K.clone(), pose.clone()
    k_neg[0, 0], k_neg[1, 1] = -K[0, 0], -K[1, 1]
    pose_neg[:3, 0], pose_neg[:3, 1] = -pose[:3, 0], -pose[:3, 1]
    k_fixed, pose_fixed = flip_negative_focal(k_neg, pose_neg)
    assert (k_fixed.diagonal()[:2] > 0).all()
    points, _ = depth_to_world_points(depth, k_fixed, pose_fixed)
    assert torch.allclose(points, expected)


def _reference_fps(points: np.ndarray, k: int, first: int) -> list[int]:
    chosen = [first]
    dist = np.full(len(points), np.inf)
    for _ in range(k - 1):
        dist = np.minimum(dist, ((points - points[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(dist.argmax()))
    return chosen


def test_farthest_point_sampling_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 200, 3, generator=g, dtype=torch.float64)
    idx = farthest_point_sample(pts, 16)
    for b in range(3):
        centroid = pts[b].mean(0)
        first = int(((pts[b] - centroid) ** 2).sum(-1).argmin())
        assert idx[b].tolist() == _reference_fps(pts[b].numpy(), 16, first)
    # Deterministic without a generator.
    assert torch.equal(idx, farthest_point_sample(pts, 16))


def test_fps_spreads_points_better_than_random_and_skips_invalid_points():
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(1, 500, 3, generator=g)
    valid = torch.rand(1, 500, generator=g) > 0.5
    idx = farthest_point_sample(pts, 20, valid)
    assert valid[0, idx[0]].all()
    assert len(set(idx[0].tolist())) == 20
    chosen = pts[0, idx[0]]
    random_subset = pts[0, valid[0].nonzero()[:20, 0]]
    assert torch.pdist(chosen).min() > torch.pdist(random_subset).min()


def test_fps_with_too_few_or_no_valid_points():
    pts = torch.rand(1, 10, 3)
    valid = torch.zeros(1, 10, dtype=torch.bool)
    valid[0, :3] = True
    idx = farthest_point_sample(pts, 8, valid)
    assert set(idx[0].tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="no valid point"):
        farthest_point_sample(pts, 4, torch.zeros(1, 10, dtype=torch.bool))


def test_fuse_pointcloud_crops_to_bounds_and_keeps_colour():
    pose = _look_at([0.0, -1.5, 2.0], [0.0, 0.0, 0.0])
    depth = _depth_of_plane_z0(K, pose, 24, 32).float()
    colors = torch.rand(3, 24, 32)
    low, high = [-0.2, -0.2, -0.01], [0.2, 0.2, 0.01]
    cloud = fuse_pointcloud([depth], [K.float()], [pose.float()], 32, low, high, colors=[colors])
    assert cloud.shape == (32, 6)
    assert in_bounds(cloud[:, :3], low, high).all()
    # Each point's colour is the colour of the pixel it came from.
    pixels, _ = project_points(cloud[:, :3].double(), K, pose)
    u, v = pixels.round().long().unbind(-1)
    assert torch.allclose(cloud[:, 3:], colors[:, v, u].T)
    assert math.isclose(float(cloud[:, 2].abs().max()), 0.0, abs_tol=1e-5)
