"""The fast point-cloud path: voxel reduction, fpsample's QuickFPS, cached rays, bad frames and stored clouds.

Quality is measured on real RLBench clouds (the shared demos, 4 cameras at 128x128, 1,024 points, the RLBench
configs' bounds): the coverage radius, the largest distance from any input point to its nearest sample, of
the step's sampler against exact farthest-point sampling.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import shared_path

from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_key, extrinsics_key, intrinsics_key
from lerobot_flowstep.core import geometry
from lerobot_flowstep.core.geometry import (
    PixelRayCache,
    camera_rays,
    coverage_radius,
    farthest_point_sample,
    fpsample_available,
    in_bounds,
    voxel_downsample,
)
from lerobot_flowstep.processor import pointcloud as pointcloud_module
from lerobot_flowstep.processor.pointcloud import PointCloudProcessorStep
from lerobot_flowstep.rlbench.conventions import DEFAULT_BOUNDS_HIGH, DEFAULT_BOUNDS_LOW
from lerobot_flowstep.rlbench.demo_files import discover_episodes, read_episode

CAMERAS = ["front", "left_shoulder", "right_shoulder", "wrist"]
REAL_TASK = ("data", "rlbench", "reach_target")
NUM_POINTS = 1024
needs_fpsample = pytest.mark.skipif(not fpsample_available(), reason="fpsample is not installed")


@pytest.fixture(scope="module")
def real_frames():
    """Observations of three frames of a real RLBench demo, as the step receives them (batch of one)."""
    _, episodes = discover_episodes(shared_path(*REAL_TASK))
    arrays = read_episode(episodes[0], CAMERAS)
    return [arrays.observation(t, CAMERAS) for t in (0, arrays.num_frames // 2, arrays.num_frames - 1)]


def _cropped_cloud(observation) -> torch.Tensor:
    """Every valid in-bounds point of the frame, by the plain per-camera back-projection."""
    points = []
    for cam in CAMERAS:
        world, valid = geometry.depth_to_world_points(
            observation[depth_key(cam)][0, 0], observation[intrinsics_key(cam)][0], observation[extrinsics_key(cam)][0]
        )
        points.append(world[valid & in_bounds(world, DEFAULT_BOUNDS_LOW, DEFAULT_BOUNDS_HIGH)])
    return torch.cat(points)


def _step(**overrides) -> PointCloudProcessorStep:
    settings = dict(
        cameras=CAMERAS,
        num_points=NUM_POINTS,
        bounds_low=list(DEFAULT_BOUNDS_LOW),
        bounds_high=list(DEFAULT_BOUNDS_HIGH),
    )
    return PointCloudProcessorStep(**{**settings, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="defaults", marks=needs_fpsample),
        pytest.param({"sampler": "fpsample", "voxel_size": 0.005}, id="voxel-5mm-fpsample", marks=needs_fpsample),
        pytest.param({"sampler": "torch", "voxel_size": 0.005}, id="voxel-5mm-torch"),
    ],
)
def test_fast_sampler_covers_real_clouds_within_10_percent_of_exact_fps(real_frames, overrides):
    step = _step(**overrides)
    for observation in real_frames:
        cloud = _cropped_cloud(observation)
        exact = cloud[farthest_point_sample(cloud, NUM_POINTS, backend="torch")]
        fast = step.observation(dict(observation))[OBS_POINTCLOUD][0]
        assert fast.shape == (NUM_POINTS, 3)
        assert in_bounds(fast, DEFAULT_BOUNDS_LOW, DEFAULT_BOUNDS_HIGH).all()
        exact_radius, fast_radius = coverage_radius(cloud, exact), coverage_radius(cloud, fast)
        assert fast_radius <= 1.10 * exact_radius, (fast_radius, exact_radius)
        # The samples spread: a random subset of the same size covers far worse.
        random = cloud[torch.randperm(len(cloud), generator=torch.Generator().manual_seed(0))[:NUM_POINTS]]
        assert coverage_radius(cloud, random) > 1.5 * exact_radius


@pytest.mark.parametrize("sampler", [pytest.param("fpsample", marks=needs_fpsample), "torch"])
def test_sampler_is_deterministic_at_evaluation(real_frames, sampler):
    observation = real_frames[1]
    first = _step(sampler=sampler, voxel_size=0.01).observation(dict(observation))[OBS_POINTCLOUD]
    second = _step(sampler=sampler, voxel_size=0.01).observation(dict(observation))[OBS_POINTCLOUD]
    assert torch.equal(first, second)


def test_voxel_downsample_is_the_mean_per_occupied_voxel():
    g = torch.Generator().manual_seed(0)
    points = torch.cat([torch.rand(300, 3, generator=g, dtype=torch.float64) * 0.1 - 0.05, torch.rand(300, 3)], -1)
    size = 0.02
    # Independent reference: group the points by their integer cell in a dict.
    groups: dict[tuple, list[np.ndarray]] = {}
    for p in points.numpy():
        groups.setdefault(tuple(np.floor(p[:3] / size).astype(int)), []).append(p)
    expected = np.array([np.mean(groups[key], axis=0) for key in sorted(groups)])
    reduced = voxel_downsample(points, size).numpy()
    assert reduced.shape == expected.shape
    np.testing.assert_allclose(
        reduced[np.lexsort(reduced[:, :3].T[::-1])], expected[np.lexsort(expected[:, :3].T[::-1])]
    )
    with pytest.raises(ValueError, match="voxel_size"):
        voxel_downsample(points, 0.0)


@needs_fpsample
def test_fpsample_backend_maps_back_to_valid_points_and_repeats_small_clouds():
    g = torch.Generator().manual_seed(3)
    points = torch.rand(2, 400, 3, generator=g)
    valid = torch.rand(2, 400, generator=g) > 0.5
    indices = farthest_point_sample(points, 32, valid, backend="fpsample")
    assert indices.shape == (2, 32)
    for b in range(2):
        assert valid[b, indices[b]].all()
        assert len(set(indices[b].tolist())) == 32
    few = torch.zeros(1, 400, dtype=torch.bool)
    few[0, [5, 17, 230]] = True
    assert set(farthest_point_sample(points[:1], 8, few, backend="fpsample")[0].tolist()) == {5, 17, 230}
    with pytest.raises(ValueError, match="backend"):
        farthest_point_sample(points, 4, backend="open3d")


def test_rays_are_computed_once_per_intrinsics_and_image_size(monkeypatch):
    calls = []
    original = geometry.planar_rays
    monkeypatch.setattr(geometry, "planar_rays", lambda *a: calls.append(a) or original(*a))
    cache = PixelRayCache()
    k = torch.tensor([[50.0, 0.0, 15.5], [0.0, 50.0, 11.5], [0.0, 0.0, 1.0]])
    rays = cache.rays(k.expand(4, 3, 3), 24, 32)
    assert torch.allclose(rays, camera_rays(k, 24, 32).reshape(-1, 3).T)
    for _ in range(3):
        assert cache.rays(k.expand(2, 3, 3), 24, 32) is rays
    assert len(calls) == 1
    other = k.clone()
    other[0, 0] = 60.0
    assert not torch.equal(cache.rays(other, 24, 32), rays)
    cache.rays(k, 12, 16)
    assert len(calls) == 3
    # Frames of one batch seen by different cameras get their own rays.
    mixed = cache.rays(torch.stack([k, other]), 24, 32)
    assert mixed.shape == (2, 3, 24 * 32) and torch.equal(mixed[1], cache.rays(other, 24, 32))


def _plane_observation(depth_value: float, batch: int = 2):
    k = torch.tensor([[8.0, 0.0, 3.5], [0.0, 8.0, 3.5], [0.0, 0.0, 1.0]])
    return {
        depth_key("a"): torch.full((batch, 1, 8, 8), depth_value),
        intrinsics_key("a"): k.expand(batch, 3, 3).clone(),
        extrinsics_key("a"): torch.eye(4).expand(batch, 4, 4).clone(),
    }


def test_a_frame_with_an_empty_cloud_gets_the_workspace_centre_and_a_warning(caplog):
    step = PointCloudProcessorStep(cameras=["a"], num_points=16, bounds_low=[-1, -1, 0.5], bounds_high=[1, 1, 3])
    observation = _plane_observation(2.0)
    observation[depth_key("a")][1] = 0.0  # frame 1: no valid depth at all
    with caplog.at_level(logging.WARNING):
        cloud = step.observation(observation)[OBS_POINTCLOUD]
    assert torch.isfinite(cloud).all()
    assert torch.allclose(cloud[0, :, 2], torch.full((16,), 2.0))
    assert torch.equal(cloud[1], torch.tensor([0.0, 0.0, 1.75]).expand(16, 3))
    assert "1 of 2 frames have no valid depth point" in caplog.text and "['a']" in caplog.text
    # Outside the bounds is empty too; without bounds the fill is the origin.
    far = _plane_observation(5.0, batch=1)
    assert torch.equal(step.observation(dict(far))[OBS_POINTCLOUD][0], torch.tensor([0.0, 0.0, 1.75]).expand(16, 3))
    unbounded = PointCloudProcessorStep(cameras=["a"], num_points=4)
    assert torch.equal(unbounded.observation(_plane_observation(0.0, 1))[OBS_POINTCLOUD], torch.zeros(1, 4, 3))


@pytest.mark.parametrize(
    ("key", "index", "value", "message"),
    [
        ("intrinsics", (0, 0), float("nan"), "intrinsics hold NaN or inf"),
        ("intrinsics", (1, 2), float("inf"), "intrinsics hold NaN or inf"),
        ("intrinsics", (1, 1), 0.0, "intrinsics have a zero focal length"),
        ("extrinsics", (0, 3), float("nan"), "extrinsics hold NaN or inf"),
    ],
)
def test_bad_camera_parameters_raise_naming_the_camera(key, index, value, message):
    step = PointCloudProcessorStep(cameras=["a", "wrist"], num_points=8)
    observation = {
        **_plane_observation(2.0),
        **{k.replace(".a", ".wrist"): v for k, v in _plane_observation(2.0).items()},
    }
    bad_key = intrinsics_key("wrist") if key == "intrinsics" else extrinsics_key("wrist")
    observation[bad_key][1][index] = value
    with pytest.raises(ValueError, match=rf"camera 'wrist': {message}") as error:
        step.observation(observation)
    assert "camera 'a'" not in str(error.value)


def test_fixed_camera_with_a_zero_focal_length_is_refused_at_construction():
    bad = [[0.0, 0.0, 3.5], [0.0, 8.0, 3.5], [0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match=r"'top \(pointcloud.fixed_cameras\)': intrinsics have a zero focal"):
        PointCloudProcessorStep(
            cameras=["top"], fixed_cameras={"top": {"intrinsics": bad, "extrinsics": torch.eye(4).tolist()}}
        )


def test_a_stored_cloud_is_used_as_it_is_and_a_mismatched_one_is_refused(monkeypatch):
    step = PointCloudProcessorStep(cameras=["a"], num_points=16)
    stored = torch.rand(4, 2, 16, 3)
    monkeypatch.setattr(pointcloud_module, "fuse_pointcloud", lambda *a, **k: pytest.fail("the cloud was recomputed"))
    observation = {**_plane_observation(2.0, batch=4), OBS_POINTCLOUD: stored}
    assert step.observation(observation)[OBS_POINTCLOUD] is stored
    with pytest.raises(ValueError, match=r"num_points=16.*Store the dataset's clouds with the same settings"):
        step.observation({OBS_POINTCLOUD: torch.rand(4, 32, 3)})


def test_a_dataset_cloud_of_another_size_is_refused_when_the_policy_is_configured():
    from conftest import ACTION_FEATURES, camera_features
    from lerobot.configs import FeatureType, PolicyFeature

    from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig

    features = {**camera_features(16), OBS_POINTCLOUD: PolicyFeature(FeatureType.STATE, (512, 3))}
    config = FlowstepTeacherConfig(device="cpu", input_features=features, output_features=dict(ACTION_FEATURES))
    config.pointcloud.cameras, config.pointcloud.num_points = ["top"], 256
    with pytest.raises(ValueError, match=r"stores 'observation.pointcloud' of shape \(512, 3\).*\(256, 3\)"):
        config.validate_features()
    config.pointcloud.num_points = 512
    config.validate_features()


def test_coverage_radius_against_brute_force():
    g = torch.Generator().manual_seed(4)
    points, samples = torch.rand(700, 3, generator=g), torch.rand(300, 3, generator=g)
    expected = max(min(float(torch.linalg.norm(p - q)) for q in samples) for p in points[:50])
    assert coverage_radius(points[:50], samples, chunk=7) == pytest.approx(expected, rel=1e-5)
    assert coverage_radius(samples, samples) == pytest.approx(0.0, abs=1e-3)


def test_depth_that_does_not_match_its_camera_parameters_is_refused():
    observation = _plane_observation(2.0, batch=4)
    depth = observation[depth_key("a")]  # (4, 1, 8, 8): a channel dimension left in
    k, t = observation[intrinsics_key("a")], observation[extrinsics_key("a")]
    with pytest.raises(ValueError, match=r"camera 'a': depth \(4, 1, 8, 8\) must be \(\.\.\., H, W\)"):
        geometry.fuse_pointcloud([depth], [k], [t], 8, camera_names=["a"])
    assert geometry.fuse_pointcloud([depth[:, 0]], [k], [t], 8).shape == (4, 8, 3)
    assert geometry.fuse_pointcloud([depth[:, 0]], [k[0]], [t[0]], 8).shape == (4, 8, 3)  # a fixed camera


def test_the_batched_torch_sampler_gives_each_frame_its_own_cloud(caplog):
    """The torch sampler runs all frames in one loop (what a GPU needs); each frame's cloud must be the one
    that frame alone gives, and an empty frame in the batch gets the fill."""
    step = PointCloudProcessorStep(
        cameras=["a"], num_points=12, bounds_low=[-1, -1, 0.5], bounds_high=[1, 1, 3], sampler="torch"
    )
    g = torch.Generator().manual_seed(5)
    observation = _plane_observation(2.0, batch=3)
    observation[depth_key("a")] = 1.0 + torch.rand(3, 1, 8, 8, generator=g)
    observation[depth_key("a")][0, 0, :4] = 0.0  # frames of different valid counts
    observation[depth_key("a")][1] = 0.0  # and an empty one
    batched = step.observation(dict(observation))[OBS_POINTCLOUD]
    for b in (0, 2):
        alone = step.observation({k: v[b : b + 1] for k, v in observation.items()})[OBS_POINTCLOUD][0]
        assert torch.equal(batched[b], alone)
    assert torch.equal(batched[1], torch.tensor([0.0, 0.0, 1.75]).expand(12, 3))
