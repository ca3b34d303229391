"""RLBench demos -> LeRobotDataset: decoding, geometry (checked against PyRep's formula), actions,
keyframes, layouts, bad input, atomic writes, the real demos and a `lerobot-train` run on the result."""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from depth_codec import depth_read_back_bound, in_range
from lerobot.configs import FeatureType
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.utils.feature_utils import dataset_to_policy_features
from PIL import Image
from rlbench_fixtures import Demo, Observation, encode_depth, rlbench_modules, write_episode, write_pickle, write_task

from lerobot_flowstep.constants import (
    OBS_POINTCLOUD,
    depth_key,
    depth_map_key,
    extrinsics_key,
    intrinsics_key,
    rgb_key,
)
from lerobot_flowstep.core.geometry import depth_to_world_points, flip_negative_focal
from lerobot_flowstep.processor.depth_maps import DepthMapProcessorStep
from lerobot_flowstep.processor.pointcloud import PointCloudConfig, PointCloudProcessorStep, fused_pointclouds
from lerobot_flowstep.rlbench import geometry_check
from lerobot_flowstep.rlbench.cli import add_convert_rlbench_parser
from lerobot_flowstep.rlbench.conventions import (
    FRAME_COLUMN,
    RLBENCH_CAMERAS,
    TARGET_COLUMN,
    VARIATION_COLUMN,
    decode_depth,
    opencv_camera,
    rlbench_pointcloud_config,
)
from lerobot_flowstep.rlbench.converter import convert_rlbench, keypoint_discovery
from lerobot_flowstep.rlbench.demo_files import RLBenchDataError, discover_episodes, load_observations, read_episode
from lerobot_flowstep.rlbench.geometry_check import check_rlbench_geometry
from lerobot_flowstep.tools.lerobot_commands import last_checkpoint, lerobot_train, offline_env, train_args

REPO_ID = "local/rlbench_test"
REAL_TASK = ("data", "rlbench", "reach_target")


# --- references written from RLBench's and PyRep's published code -------------------------------------


def rlbench_image_to_depth(packed: np.ndarray, near: float, far: float) -> np.ndarray:
    """`near + image_to_float_array(image, 2**24 - 1) * (far - near)` as RLBench's `get_stored_demos` does."""
    normalized = np.sum(packed * [65536, 256, 1], axis=2) / float(2**24 - 1)
    return near + normalized * (far - near)


def pyrep_pointcloud(depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """PyRep's `VisionSensor.pointcloud_from_depth_and_camera_params`: (H, W, 3) world points.

    Pixel (u, v) = (column, row) scaled by depth, mapped through the inverse of the homogeneous
    projection K [R^T | -R^T C] built from the camera-to-world extrinsics.
    """
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    pixels = np.stack([u, v, np.ones_like(u)], axis=-1) * depth[..., None]
    rotation, centre = extrinsics[:3, :3], extrinsics[:3, 3:4]
    projection = intrinsics @ np.concatenate([rotation.T, -rotation.T @ centre], axis=1)
    inverse = np.linalg.inv(np.concatenate([projection, [[0.0, 0.0, 0.0, 1.0]]]))[:3]
    homogeneous = np.concatenate([pixels, np.ones((h, w, 1))], axis=-1).reshape(-1, 4)
    return (homogeneous @ inverse.T).reshape(h, w, 3)


def reference_keypoints(observations: list, delta: float = 0.1) -> list[int]:
    """ARM/PerAct `_keypoint_discovery` as published, on objects with gripper_open / joint_velocities."""

    def is_stopped(demo, i, obs, stopped_buffer):
        next_is_not_final = i == (len(demo) - 2)
        gripper_state_no_change = i < (len(demo) - 2) and (
            obs.gripper_open == demo[i + 1].gripper_open
            and obs.gripper_open == demo[i - 1].gripper_open
            and demo[i - 2].gripper_open == demo[i - 1].gripper_open
        )
        small_delta = np.allclose(obs.joint_velocities, 0, atol=delta)
        return stopped_buffer <= 0 and small_delta and (not next_is_not_final) and gripper_state_no_change

    keypoints, previous, buffer = [], observations[0].gripper_open, 0
    for i, obs in enumerate(observations):
        stopped = is_stopped(observations, i, obs, buffer)
        buffer = 4 if stopped else buffer - 1
        if i != 0 and (obs.gripper_open != previous or i == len(observations) - 1 or stopped):
            keypoints.append(i)
        previous = obs.gripper_open
    if len(keypoints) > 1 and keypoints[-1] - 1 == keypoints[-2]:
        keypoints.pop(-2)
    return keypoints


class _Raw:
    def __setstate__(self, state):
        self.__dict__.update(state)


class _RawUnpickler(pickle.Unpickler):
    """Reads raw RLBench pickles independently of the converter's unpickler."""

    def find_class(self, module, name):
        return _Raw if module.startswith("rlbench") else super().find_class(module, name)


def raw_observations(episode_dir: Path) -> list:
    with open(episode_dir / "low_dim_obs.pkl", "rb") as f:
        return _RawUnpickler(f).load()._observations


def assert_same_rotation(stored: np.ndarray, raw: np.ndarray) -> None:
    sign = 1.0 if np.dot(stored, raw) >= 0 else -1.0
    np.testing.assert_allclose(stored, sign * raw, atol=1e-6)
    assert stored @ [0.0, 1.0, 0.0, 0.0] >= 0.0  # canonical hemisphere (gripper pointing down)


def no_leftovers(parent: Path, expected: set[str]) -> None:
    gc.collect()
    assert {p.name for p in parent.iterdir()} == expected


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("raw")
    return write_task(root, episodes=2, num_frames=8, image_size=16, close_at=4)


@pytest.fixture(scope="module")
def converted(synthetic, tmp_path_factory: pytest.TempPathFactory):
    task_dir, _ = synthetic
    out = tmp_path_factory.mktemp("out") / "dataset"
    summary = convert_rlbench(task_dir, out, repo_id=REPO_ID, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory: pytest.TempPathFactory):
    task_dir = shared_path(*REAL_TASK)
    out = tmp_path_factory.mktemp("real") / "reach_target"
    summary = convert_rlbench(task_dir, out, progress=False)
    return task_dir, out, summary


# --- decoding and geometry --------------------------------------------------------------------------


def test_depth_decoding_inverts_rlbench_packing() -> None:
    rng = np.random.default_rng(0)
    near, far = 0.01, 4.5
    depth = rng.uniform(near, far, size=(32, 24))
    packed = encode_depth(depth, near, far)
    decoded = decode_depth(packed, near, far)
    assert decoded.dtype == np.float32 and decoded.shape == depth.shape
    np.testing.assert_array_equal(decoded, rlbench_image_to_depth(packed, near, far).astype(np.float32))
    # 24 bits over 4.5 m: quantisation well under a micrometre, then float32 rounding.
    assert np.abs(decoded - depth).max() < 1e-6 * far
    # The byte order matters: R is the high byte.
    assert decode_depth(np.array([[[1, 0, 0]]], dtype=np.uint8), 0.0, 1.0)[0, 0] == np.float32(65536 / (2**24 - 1))


def _geometry_agrees_with_pyrep(episode_dir: Path, cameras, frames) -> tuple[float, float]:
    """Worst difference (m) between PyRep's cloud and ours, and the same with PyRep's rotation.

    PyRep inverts K [R^T | -R^T C] numerically, so it effectively rotates by inverse(R^T); we rotate by R.
    The two agree exactly for an orthonormal R, and RLBench's rotations are orthonormal only to float32
    precision (|R^T R - I| ~ 3e-7 on the real demos), hence the second figure.
    """
    observations = raw_observations(episode_dir)
    worst = worst_same_rotation = 0.0
    for t in (f % len(observations) for f in frames):
        misc = observations[t].misc
        for cam in cameras:
            packed = np.asarray(Image.open(episode_dir / f"{cam}_depth" / f"{t}.png").convert("RGB"))
            depth = rlbench_image_to_depth(packed, misc[f"{cam}_camera_near"], misc[f"{cam}_camera_far"])
            k_raw, t_raw = misc[f"{cam}_camera_intrinsics"], misc[f"{cam}_camera_extrinsics"]
            assert k_raw[0, 0] < 0 and k_raw[1, 1] < 0  # RLBench's convention
            reference = pyrep_pointcloud(depth, t_raw, k_raw).reshape(-1, 3)
            k, e = flip_negative_focal(torch.from_numpy(k_raw), torch.from_numpy(t_raw))
            ours, valid = depth_to_world_points(torch.from_numpy(depth), k, e)
            assert bool(valid.all())
            worst = max(worst, float(np.abs(ours.numpy() - reference).max()))
            t_pyrep = t_raw.copy()
            t_pyrep[:3, :3] = np.linalg.inv(t_raw[:3, :3].T)
            k, e = flip_negative_focal(torch.from_numpy(k_raw), torch.from_numpy(t_pyrep))
            same, _ = depth_to_world_points(torch.from_numpy(depth), k, e)
            worst_same_rotation = max(worst_same_rotation, float(np.abs(same.numpy() - reference).max()))
            # The float32 parameters the dataset stores give the same cloud to float32 precision.
            k, e = flip_negative_focal(torch.from_numpy(k_raw), torch.from_numpy(t_raw))
            ours32, _ = depth_to_world_points(torch.from_numpy(depth).float(), k.float(), e.float())
            assert np.abs(ours32.numpy() - reference).max() < 2e-5
    return worst, worst_same_rotation


def test_pointcloud_matches_pyrep_on_synthetic_demo(synthetic) -> None:
    _, episodes = synthetic
    worst, worst_same_rotation = _geometry_agrees_with_pyrep(episodes[0].path, RLBENCH_CAMERAS, [0, 7])
    assert worst < 1e-9 and worst_same_rotation < 1e-9


def test_pointcloud_matches_pyrep_on_real_demos() -> None:
    for episode in ("episode0", "episode1"):
        episode_dir = shared_path(*REAL_TASK, "variation0", "episodes", episode)
        worst, worst_same_rotation = _geometry_agrees_with_pyrep(episode_dir, RLBENCH_CAMERAS, [0, 30, -1])
        print(f"{episode}: max |ours - PyRep| = {worst:.2e} m, {worst_same_rotation:.2e} m with PyRep's rotation")
        assert worst < 1e-6, worst  # float32-orthonormal rotations, ~1e-7 relative at up to 4.5 m
        assert worst_same_rotation < 1e-9, worst_same_rotation


def test_geometry_check_on_real_demos(monkeypatch: pytest.MonkeyPatch) -> None:
    flip = opencv_camera
    episode_dir = shared_path(*REAL_TASK, "variation0", "episodes", "episode0")
    report = check_rlbench_geometry(episode_dir, max_points=400)
    print(report.format())
    assert report.passed, report.format()
    assert all(h is not None and abs(h - 0.75) < 0.003 for h in report.table_height.values())
    assert report.height_spread < 0.002
    assert len(report.overlap_median) == 20 and max(report.overlap_median.values()) < 0.008

    # Negative controls: the usual mistakes must fail the check. Making the focal lengths positive without
    # flipping the camera axes mirrors every cloud; reading the extrinsics as world-to-camera misplaces it.
    cameras = ["front", "left_shoulder"]
    monkeypatch.setattr(geometry_check, "opencv_camera", lambda k, t: (np.abs(k), np.asarray(t, float)))
    assert not check_rlbench_geometry(episode_dir, cameras=cameras, max_points=400).passed
    monkeypatch.setattr(geometry_check, "opencv_camera", lambda k, t: flip(k, np.linalg.inv(t)))
    assert not check_rlbench_geometry(episode_dir, cameras=cameras, max_points=400).passed


def test_geometry_check_on_synthetic_scene(tmp_path: Path) -> None:
    episode = write_episode(tmp_path / "task" / "variation0" / "episodes" / "episode0", num_frames=1, image_size=96)
    report = check_rlbench_geometry(episode.path, max_points=500)
    assert report.passed, report.format()
    assert all(abs(h - 0.752) < 0.002 for h in report.table_height.values() if h is not None)


# --- the converted dataset --------------------------------------------------------------------------


def test_converted_dataset_matches_raw_files(synthetic, converted) -> None:
    _, episodes = synthetic
    root, summary = converted
    assert (summary.episodes, summary.frames, summary.skipped) == (2, 16, [])
    dataset = LeRobotDataset(REPO_ID, root=root)
    assert dataset.fps == 20 and dataset.num_episodes == 2 and len(dataset) == 16
    raw = dataset.hf_dataset.with_format("numpy")
    episode_index = np.asarray(raw["episode_index"])
    actions, states = np.stack(raw["action"]), np.stack(raw["observation.state"])
    for index, episode in enumerate(episodes):
        rows = np.flatnonzero(episode_index == index)
        assert len(rows) == 8
        np.testing.assert_array_equal(np.asarray(raw[FRAME_COLUMN])[rows].ravel(), np.arange(8))
        np.testing.assert_array_equal(np.asarray(raw[TARGET_COLUMN])[rows].ravel(), [1, 2, 3, 4, 5, 6, 7, 7])
        for row, t in zip(rows, range(8), strict=True):
            target = min(t + 1, 7)
            np.testing.assert_allclose(actions[row][:3], episode.poses[target, :3], atol=1e-6)
            assert_same_rotation(actions[row][3:7], episode.poses[target, 3:])
            assert actions[row][7] == episode.gripper_open[target]
            np.testing.assert_allclose(states[row][:7], episode.joints[t], atol=1e-6)
            assert states[row][7] == episode.gripper_open[t]
            np.testing.assert_allclose(states[row][8:11], episode.poses[t, :3], atol=1e-6)
            assert_same_rotation(states[row][11:], episode.poses[t, 3:])
        # The state of frame t + 1 is the action of frame t (same canonical quaternion).
        np.testing.assert_allclose(actions[rows[:-1]], states[rows[1:]][:, [8, 9, 10, 11, 12, 13, 14, 7]], atol=1e-6)

    item = dataset[0]
    first_raw = raw_observations(episodes[0].path)[0]
    for cam in RLBENCH_CAMERAS:
        png = np.asarray(Image.open(episodes[0].path / f"{cam}_rgb" / "0.png").convert("RGB"))
        np.testing.assert_array_equal((item[rgb_key(cam)] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), png)
        feature = dataset.meta.features[depth_map_key(cam)]
        assert feature["dtype"] == "video" and feature["shape"] == (16, 16, 1) and feature["info"]["is_depth_map"]
        depth = item[depth_map_key(cam)]  # millimetres, LeRobot's default
        assert depth.shape == (1, 16, 16) and depth.dtype == torch.float32
        source = episodes[0].depth[cam][0].astype(np.float64)
        kept = in_range(source, feature["info"])
        error = np.abs(depth[0].numpy() / 1000 - source)
        assert (error <= depth_read_back_bound(source, feature["info"]))[kept].all(), error[kept].max()
        if cam == "wrist":  # moves with the gripper: its parameters are stored per frame
            k, e = item[intrinsics_key(cam)].double(), item[extrinsics_key(cam)].double()
        else:  # fixed: once, in the depth map's info
            assert intrinsics_key(cam) not in item
            k = torch.tensor(feature["info"]["camera_intrinsics"], dtype=torch.float64)
            e = torch.tensor(feature["info"]["camera_to_world"], dtype=torch.float64)
        assert k[0, 0] > 0 and k[1, 1] > 0  # OpenCV convention in the dataset
        k_ref, e_ref = flip_negative_focal(
            torch.from_numpy(first_raw.misc[f"{cam}_camera_intrinsics"]),
            torch.from_numpy(first_raw.misc[f"{cam}_camera_extrinsics"]),
        )
        torch.testing.assert_close(k, k_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(e, e_ref, atol=1e-6, rtol=0)
    assert item["task"] == "reach the red target"

    features = dataset_to_policy_features(dataset.meta.features)
    assert features[rgb_key("front")].type is FeatureType.VISUAL
    assert dataset.meta.depth_keys == [depth_map_key(cam) for cam in RLBENCH_CAMERAS]
    assert features["action"].shape == (8,) and features["observation.state"].shape == (15,)
    assert not any(k.startswith("rlbench_") for k in features)
    assert "rlbench" not in sys.modules  # read without RLBench


def test_keyframes_only(tmp_path: Path, synthetic) -> None:
    task_dir, episodes = synthetic
    out = tmp_path / "kf"
    summary = convert_rlbench(task_dir, out, repo_id=REPO_ID, keyframes_only=True, progress=False)
    raw = LeRobotDataset(REPO_ID, root=out).hf_dataset.with_format("numpy")
    episode_index = np.asarray(raw["episode_index"])
    for index, episode in enumerate(episodes):
        keypoints = reference_keypoints(raw_observations(episode.path))
        assert 4 in keypoints  # the gripper closes at frame 4
        rows = np.flatnonzero(episode_index == index)
        np.testing.assert_array_equal(np.asarray(raw[FRAME_COLUMN])[rows].ravel(), [0, *keypoints[:-1]])
        np.testing.assert_array_equal(np.asarray(raw[TARGET_COLUMN])[rows].ravel(), keypoints)
        actions = np.stack(raw["action"])[rows]
        np.testing.assert_allclose(actions[:, :3], episode.poses[keypoints, :3], atol=1e-6)
        np.testing.assert_array_equal(actions[:, 7], episode.gripper_open[keypoints])
    assert summary.frames == len(episode_index)


@pytest.mark.parametrize(
    ("gripper", "moving"),
    [
        ([1, 1, 1, 0, 0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
        ([1] * 12, [1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]),
        ([0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0]),
        ([1, 1], [0, 0]),
    ],
)
def test_keypoint_discovery_matches_reference(gripper: list[int], moving: list[int]) -> None:
    observations = [
        argparse.Namespace(gripper_open=float(g), joint_velocities=np.full(7, 0.5 * m))
        for g, m in zip(gripper, moving, strict=True)
    ]
    ours = keypoint_discovery([o.gripper_open for o in observations], [o.joint_velocities for o in observations])
    assert ours == reference_keypoints(observations)


def test_joint_position_actions(tmp_path: Path, synthetic) -> None:
    task_dir, episodes = synthetic
    out = tmp_path / "joints"
    convert_rlbench(task_dir, out, repo_id=REPO_ID, action_mode="joint_positions", cameras=["front"], progress=False)
    dataset = LeRobotDataset(REPO_ID, root=out)
    assert dataset.meta.features["action"]["names"][:2] == ["joint_0", "joint_1"]
    actions = np.stack(dataset.hf_dataset.with_format("numpy")["action"])
    np.testing.assert_allclose(actions[0], [*episodes[0].joints[1], episodes[0].gripper_open[1]], atol=1e-6)
    np.testing.assert_allclose(actions[7], [*episodes[0].joints[7], episodes[0].gripper_open[7]], atol=1e-6)
    assert set(dataset.meta.camera_keys) == {rgb_key("front"), depth_map_key("front")}


def test_stored_pointcloud_equals_the_processor_step(tmp_path: Path, synthetic) -> None:
    task_dir, _ = synthetic
    out = tmp_path / "pc"
    options = rlbench_pointcloud_config(cameras=["front", "wrist"], num_points=48, use_rgb=True)
    convert_rlbench(
        task_dir, out, repo_id=REPO_ID, cameras=["front", "wrist", "overhead"], pointcloud=options, progress=False
    )
    dataset = LeRobotDataset(REPO_ID, root=out, depth_output_unit="m")
    item = dataset[5]
    assert item[OBS_POINTCLOUD].shape == (48, 6)
    # The stored cloud is the step's own function on the source's exact float depth ...
    cams = ["front", "wrist"]
    arrays = read_episode(discover_episodes(task_dir)[1][0], cams)
    exact = fused_pointclouds(
        [arrays.depth[c][5:6] for c in cams],
        [arrays.intrinsics[c][5:6] for c in cams],
        [arrays.extrinsics[c][5:6] for c in cams],
        options,
        colors=[arrays.rgb[c][5:6] for c in cams],
    )[0]
    np.testing.assert_allclose(item[OBS_POINTCLOUD].numpy(), exact, atol=1e-5, rtol=0)
    low, high = torch.tensor(options.bounds_low), torch.tensor(options.bounds_high)
    assert bool(((item[OBS_POINTCLOUD][:, :3] >= low) & (item[OBS_POINTCLOUD][:, :3] <= high)).all())
    # ... and what the policy's steps make online of the stored depth maps and calibration lies on the same
    # surfaces, within the depth codec's millimetres.
    config = PointCloudConfig(**{**asdict(options), "num_points": 256, "sampler": "torch"})
    for cam in ("front",):
        info = dataset.meta.features[depth_map_key(cam)]["info"]
        config.fixed_cameras[cam] = {"intrinsics": info["camera_intrinsics"], "extrinsics": info["camera_to_world"]}
    depth_maps = {depth_map_key(c): [0.01, 10.0] for c in cams}
    observation = {k: v[None] for k, v in item.items() if isinstance(v, torch.Tensor) and k.startswith("observation.")}
    observation.pop(OBS_POINTCLOUD)
    observation = DepthMapProcessorStep(depth_maps=depth_maps, depth_unit="m").observation(observation)
    online = PointCloudProcessorStep(**asdict(config)).observation(observation)[OBS_POINTCLOUD][0]
    nearest = torch.cdist(item[OBS_POINTCLOUD][:, :3], online[:, :3]).min(dim=1).values
    assert nearest.max() < 0.05 and nearest.median() < 0.01, nearest


def test_converter_cloud_is_the_processor_steps_cloud_on_real_frames() -> None:
    """One fuse function: the converter's stored clouds are what the policy's step makes online."""
    episode_dir = shared_path(*REAL_TASK, "variation0", "episodes", "episode1")
    observations = raw_observations(episode_dir)
    cams, frames = ["front", "wrist"], [0, 63]
    depth, rgb, intrinsics, extrinsics = {}, {}, {}, {}
    for cam in cams:
        misc = [observations[t].misc for t in frames]
        packed = [np.asarray(Image.open(episode_dir / f"{cam}_depth" / f"{t}.png").convert("RGB")) for t in frames]
        depth[cam] = np.stack(
            [
                decode_depth(p, m[f"{cam}_camera_near"], m[f"{cam}_camera_far"])
                for p, m in zip(packed, misc, strict=True)
            ]
        )
        rgb[cam] = np.stack(
            [np.asarray(Image.open(episode_dir / f"{cam}_rgb" / f"{t}.png").convert("RGB")) for t in frames]
        )
        intrinsics[cam], extrinsics[cam] = opencv_camera(
            np.stack([m[f"{cam}_camera_intrinsics"] for m in misc]),
            np.stack([m[f"{cam}_camera_extrinsics"] for m in misc]),
        )
    options = rlbench_pointcloud_config(cameras=cams, num_points=128, use_rgb=True)
    ours = fused_pointclouds(
        [depth[c] for c in cams],
        [intrinsics[c] for c in cams],
        [extrinsics[c] for c in cams],
        options,
        [rgb[c] for c in cams],
    )
    step = PointCloudProcessorStep(**asdict(options))
    observation = {}
    for c in cams:
        observation[depth_key(c)] = torch.from_numpy(depth[c])[:, None]
        observation[intrinsics_key(c)] = torch.from_numpy(intrinsics[c]).float()
        observation[extrinsics_key(c)] = torch.from_numpy(extrinsics[c]).float()
        observation[rgb_key(c)] = torch.from_numpy(rgb[c]).permute(0, 3, 1, 2).float() / 255.0
    reference = step.observation(observation)[OBS_POINTCLOUD]
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-6, rtol=0)
    assert ours.shape == (len(frames), 128, 6)


# --- layouts and task text ------------------------------------------------------------------------


def test_all_variations_layout_variation_numbers_and_description_fallbacks(tmp_path: Path) -> None:
    task_dir, episodes = write_task(
        tmp_path / "raw", task="open_box", layout="all_variations", episodes=4, num_frames=4, image_size=16,
        cameras=["front"], variations=(1, 3),
    )  # fmt: skip
    write_pickle(episodes[1].path / "variation_descriptions.pkl", {"not": "a list"})
    (episodes[2].path / "variation_descriptions.pkl").unlink()
    write_pickle(episodes[3].path / "variation_descriptions.pkl", [3, 4])
    out = tmp_path / "out"
    summary = convert_rlbench(task_dir, out, repo_id=REPO_ID, cameras=["front"], progress=False)
    dataset = LeRobotDataset(REPO_ID, root=out)
    raw = dataset.hf_dataset.with_format("numpy")
    variations = np.asarray(raw[VARIATION_COLUMN]).ravel()
    episode_index = np.asarray(raw["episode_index"])
    assert [int(variations[episode_index == e][0]) for e in range(4)] == [1, 3, 1, 3]
    tasks = [dataset[int(np.flatnonzero(episode_index == e)[0])]["task"] for e in range(4)]
    assert tasks == ["reach the red target", "open box", "open box", "open box"]
    assert len(summary.notes) == 3 and any("not a list of strings" in n for n in summary.notes)
    assert any("missing" in n for n in summary.notes)

    only = tmp_path / "only3"
    summary = convert_rlbench(task_dir, only, repo_id=REPO_ID, cameras=["front"], variations=[3], progress=False)
    assert summary.episodes == 2
    assert set(
        np.asarray(LeRobotDataset(REPO_ID, root=only).hf_dataset.with_format("numpy")[VARIATION_COLUMN]).ravel()
    ) == {3}


# --- bad input ------------------------------------------------------------------------------------


def _small_task(root: Path, episodes: int = 1):
    # 16 px: the smallest frames LeRobot's depth video encoder takes.
    return write_task(root, episodes=episodes, num_frames=3, image_size=16, cameras=["front"])


def _nan_joint(episode_dir: Path) -> None:
    observations = [Observation(**vars(o)) for o in raw_observations(episode_dir)]
    observations[1].joint_positions = np.asarray(observations[1].joint_positions, dtype=np.float64).copy()
    observations[1].joint_positions[2] = np.nan
    with rlbench_modules():
        write_pickle(episode_dir / "low_dim_obs.pkl", Demo(observations))


def test_a_fixed_camera_that_moves_is_refused_or_stored_per_frame(tmp_path: Path) -> None:
    # 4 frames: LeRobot 0.6.1 concatenates HEVC episodes of 3 frames or fewer into a file it cannot seek in.
    task_dir, episodes = write_task(tmp_path / "raw", episodes=2, num_frames=4, image_size=16, cameras=["front"])
    moved = episodes[1].path
    observations = [Observation(**vars(o)) for o in raw_observations(moved)]
    for observation in observations:
        observation.misc = dict(observation.misc)
        pose = np.array(observation.misc["front_camera_extrinsics"], dtype=np.float64)
        pose[0, 3] += 0.05  # the camera was bumped between the two episodes
        observation.misc["front_camera_extrinsics"] = pose
    with rlbench_modules():
        write_pickle(moved / "low_dim_obs.pkl", Demo(observations))
    with pytest.raises(
        RLBenchDataError, match=r"episode1 .*Camera 'front' is written as a fixed camera.*moving-cameras"
    ):
        convert_rlbench(task_dir, tmp_path / "fixed", repo_id=REPO_ID, cameras=["front"], progress=False)
    summary = convert_rlbench(
        task_dir, tmp_path / "skip", repo_id=REPO_ID, cameras=["front"], skip_bad_episodes=True, progress=False
    )
    assert summary.episodes == 1 and "fixed camera" in summary.skipped[0][1]
    assert LeRobotDataset(REPO_ID, root=tmp_path / "skip").num_episodes == 1
    convert_rlbench(
        task_dir, tmp_path / "moving", repo_id=REPO_ID, cameras=["front"], moving_cameras=["front"], progress=False
    )
    dataset = LeRobotDataset(REPO_ID, root=tmp_path / "moving")
    assert "camera_to_world" not in dataset.meta.features[depth_map_key("front")]["info"]
    last = dataset[len(dataset) - 1][extrinsics_key("front")]
    assert last[0, 3] == pytest.approx(observations[-1].misc["front_camera_extrinsics"][0, 3], abs=1e-6)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _HugeBuffer:
    """A pickle of a few bytes that asks for 100 GiB."""

    def __reduce__(self):
        return (bytearray, (100 * 2**30,))


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def _copy_png(ep: Path, folder: str, source: str, target: str) -> None:
    (ep / folder / target).write_bytes((ep / folder / source).read_bytes())


# name -> (how the episode folder is damaged, what the error must say)
BAD_EPISODES = {
    "missing-png": (
        lambda ep: (ep / "front_rgb" / "1.png").unlink(),
        r"front_rgb/ holds 2 PNG frames but low_dim_obs.pkl holds 3 observations \(missing front_rgb/1\.png\)",
    ),
    "extra-png": (lambda ep: _copy_png(ep, "front_depth", "0.png", "3.png"), r"front_depth/ holds 4 PNG frames"),
    "renamed-png": (
        lambda ep: (ep / "front_rgb" / "2.png").rename(ep / "front_rgb" / "7.png"),
        r"front_rgb/2\.png is missing",
    ),
    "corrupt-png": (lambda ep: (ep / "front_depth" / "1.png").write_bytes(b"not a png"), r"unreadable PNG"),
    "truncated-pickle": (
        lambda ep: _truncate(ep / "low_dim_obs.pkl"),
        r"low_dim_obs.pkl is truncated or not an RLBench",
    ),
    "foreign-pickle": (lambda ep: write_pickle(ep / "low_dim_obs.pkl", {"a": 1}), r"holds a dict, not an RLBench Demo"),
    "exploit-pickle": (
        lambda ep: write_pickle(ep / "low_dim_obs.pkl", _Exploit()),
        r"references (posix|os)\.system, which is not part of an RLBench demo",
    ),
    "missing-pickle": (lambda ep: (ep / "low_dim_obs.pkl").unlink(), r"low_dim_obs.pkl is missing"),
    "huge-bytearray": (
        lambda ep: write_pickle(ep / "low_dim_obs.pkl", _HugeBuffer()),
        r"asks for a bytearray of 107,374,182,400 bytes, more than the whole file \(\d+ bytes\) holds",
    ),
    "nan-joint": (lambda ep: _nan_joint(ep), r"observation 1: 'joint_positions' must hold 7 finite numbers"),
    "missing-folder": (lambda ep: (ep / "front_depth").rename(ep / "old"), r"folder front_depth/ is missing"),
}


@pytest.mark.parametrize("bad", sorted(BAD_EPISODES))
def test_bad_episode_is_named_and_nothing_is_written(tmp_path: Path, bad: str) -> None:
    corrupt, message = BAD_EPISODES[bad]
    task_dir, episodes = _small_task(tmp_path / "raw")
    corrupt(episodes[0].path)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    with pytest.raises(RLBenchDataError, match=message) as err:
        convert_rlbench(task_dir, out_parent / "dataset", repo_id=REPO_ID, cameras=["front"], progress=False)
    assert "fake_reach/variation0/episodes/episode0" in str(err.value)
    assert err.value.path is not None and err.value.path.is_relative_to(episodes[0].path)
    no_leftovers(out_parent, set())


def test_skip_bad_episodes_reports_them(tmp_path: Path) -> None:
    task_dir, episodes = _small_task(tmp_path / "raw", episodes=3)
    (episodes[1].path / "front_rgb" / "2.png").unlink()
    _truncate(episodes[2].path / "low_dim_obs.pkl")
    summary = convert_rlbench(
        task_dir, tmp_path / "out", repo_id=REPO_ID, cameras=["front"], skip_bad_episodes=True, progress=False
    )
    assert summary.episodes == 1 and summary.frames == 3
    assert [name for name, _ in summary.skipped] == [
        "fake_reach/variation0/episodes/episode1",
        "fake_reach/variation0/episodes/episode2",
    ]
    assert "2.png" in summary.skipped[0][1] and "truncated" in summary.skipped[1][1]
    text = summary.format()
    assert "episodes skipped: 2" in text and "episode2" in text
    assert LeRobotDataset(REPO_ID, root=tmp_path / "out").num_episodes == 1

    # With every episode bad there is nothing to write, and nothing is written.
    (episodes[0].path / "low_dim_obs.pkl").write_bytes(b"")
    with pytest.raises(RLBenchDataError, match="no episode could be read"):
        convert_rlbench(
            task_dir, tmp_path / "none", repo_id=REPO_ID, cameras=["front"], skip_bad_episodes=True, progress=False
        )
    assert not (tmp_path / "none").exists()


def test_unknown_camera_and_existing_output(tmp_path: Path) -> None:
    task_dir, _ = _small_task(tmp_path / "raw")
    with pytest.raises(ValueError, match=r"unknown camera name\(s\) \['side'\]"):
        convert_rlbench(task_dir, tmp_path / "x", cameras=["front", "side"], progress=False)
    with pytest.raises(ValueError, match="point-cloud cameras"):
        convert_rlbench(
            task_dir,
            tmp_path / "x",
            cameras=["front"],
            pointcloud=rlbench_pointcloud_config(cameras=["wrist"]),
            progress=False,
        )
    with pytest.raises(FileNotFoundError, match="no RLBench episodes"):
        convert_rlbench(tmp_path, tmp_path / "x", progress=False)

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_rlbench(task_dir, out, repo_id=REPO_ID, cameras=["front"], progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    # --overwrite replaces a dataset, never another folder.
    with pytest.raises(FileExistsError, match="not a LeRobot dataset"):
        convert_rlbench(task_dir, out, repo_id=REPO_ID, cameras=["front"], overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    dataset_dir = tmp_path / "dataset"
    convert_rlbench(task_dir, dataset_dir, repo_id=REPO_ID, cameras=["front"], progress=False)
    # A failing overwrite keeps the previous dataset; a successful one replaces it.
    pickle_path = next(task_dir.rglob("low_dim_obs.pkl"))
    pickle_bytes = pickle_path.read_bytes()
    pickle_path.write_bytes(b"\x80\x03")
    with pytest.raises(RLBenchDataError):
        convert_rlbench(task_dir, dataset_dir, repo_id=REPO_ID, cameras=["front"], overwrite=True, progress=False)
    assert LeRobotDataset(REPO_ID, root=dataset_dir).num_episodes == 1
    task_dir, _ = _small_task(tmp_path / "raw2", episodes=2)
    convert_rlbench(task_dir, dataset_dir, repo_id=REPO_ID, cameras=["front"], overwrite=True, progress=False)
    assert LeRobotDataset(REPO_ID, root=dataset_dir).num_episodes == 2
    pickle_path.write_bytes(pickle_bytes)
    no_leftovers(tmp_path, {"raw", "raw2", "out", "dataset"})


def test_overwrite_never_replaces_the_input(tmp_path: Path) -> None:
    """`--output` equal to `--input`, or to a folder holding it, would delete the demos it converts."""
    task_dir, _ = _small_task(tmp_path / "raw")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for output in (task_dir, task_dir.parent, tmp_path):
        with pytest.raises(ValueError, match="would replace the input"):
            convert_rlbench(task_dir, output, repo_id=REPO_ID, cameras=["front"], overwrite=True, progress=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_interrupted_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task_dir, _ = _small_task(tmp_path / "raw", episodes=2)
    calls = {"n": 0}
    original = LeRobotDataset.save_episode

    def save_episode(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LeRobotDataset, "save_episode", save_episode)
    with pytest.raises(KeyboardInterrupt):
        convert_rlbench(task_dir, tmp_path / "out", repo_id=REPO_ID, cameras=["front"], progress=False)
    no_leftovers(tmp_path, {"raw"})


def test_cli_parser(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    task_dir, _ = _small_task(tmp_path / "raw")
    parser = argparse.ArgumentParser(prog="lerobot-flowstep convert")
    add_convert_rlbench_parser(parser.add_subparsers(dest="converter", required=True))
    out = tmp_path / "out"
    args = parser.parse_args(
        ["rlbench", "--input", str(task_dir), "--output", str(out), "--cameras", "front", "--keyframes", "--pointcloud",
         "--num-points", "16", "--action", "joint_positions", "--repo-id", REPO_ID]
    )  # fmt: skip
    args.func(args)
    printed = capsys.readouterr().out
    assert "episodes written: 1" in printed and f"LeRobotDataset('{REPO_ID}'" in printed
    dataset = LeRobotDataset(REPO_ID, root=out)
    assert dataset.meta.features[OBS_POINTCLOUD]["shape"] == (16, 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["rlbench", "--input", str(task_dir), "--output", str(out), "--action", "velocity"])


def test_stand_ins_read_plain_lists_and_refuse_other_rlbench_classes(tmp_path: Path, synthetic) -> None:
    _, episodes = synthetic
    observations = load_observations(episodes[0].path / "low_dim_obs.pkl")
    assert len(observations) == 8 and observations[0].misc["front_camera_near"] == pytest.approx(0.01)
    path = tmp_path / "bimanual.pkl"
    # A protocol-0 pickle naming an RLBench class the converter does not read (bimanual RLBench).
    path.write_bytes(b"crlbench.backend.observation\nBimanualObservation\np0\n.")
    with pytest.raises(RLBenchDataError, match="BimanualObservation, which this converter does not read"):
        load_observations(path, "bimanual")


# --- the real demos -------------------------------------------------------------------------------


def test_real_demos_convert_and_match_raw_files(real_dataset) -> None:
    task_dir, root, summary = real_dataset
    print(summary.format())
    assert (summary.episodes, summary.frames, summary.skipped) == (2, 134, [])
    assert any("variation_descriptions.pkl missing" in n for n in summary.notes)
    dataset = LeRobotDataset("local/rlbench_reach_target", root=root)
    assert dataset.fps == 20
    for cam in RLBENCH_CAMERAS:
        assert dataset.meta.features[rgb_key(cam)]["shape"] == (128, 128, 3)
        assert dataset.meta.features[rgb_key(cam)]["dtype"] == "video"
        assert dataset.meta.features[depth_map_key(cam)]["shape"] == (128, 128, 1)
    raw = dataset.hf_dataset.with_format("numpy")
    episode_index = np.asarray(raw["episode_index"])
    actions = np.stack(raw["action"])
    for index, length in enumerate((70, 64)):
        episode_dir = task_dir / "variation0" / "episodes" / f"episode{index}"
        observations = raw_observations(episode_dir)
        assert len(observations) == length == len(list((episode_dir / "front_rgb").glob("*.png")))
        rows = np.flatnonzero(episode_index == index)
        assert len(rows) == length
        for row, target in ((rows[0], 1), (rows[-1], length - 1)):
            pose = observations[target].gripper_pose
            np.testing.assert_allclose(actions[row][:3], pose[:3], atol=1e-6)
            assert_same_rotation(actions[row][3:7], pose[3:])
            assert actions[row][7] == observations[target].gripper_open
        first = dataset[int(rows[0])]
        for cam in ("front", "wrist"):
            png = np.asarray(Image.open(episode_dir / f"{cam}_rgb" / "0.png").convert("RGB"))
            # RGB is LeRobot's (lossy) AV1 video from 64 px on: close to the PNG, not equal to it.
            decoded = (first[rgb_key(cam)] * 255).round().permute(1, 2, 0).numpy()
            assert np.abs(decoded - png).mean() < 8, np.abs(decoded - png).mean()


def test_real_demos_depth_reads_back_within_the_quantizer_bound(real_dataset) -> None:
    """Every camera's depth, read through LeRobotDataset in metres and in millimetres, against the PNG-decoded
    metric depth (`demo_files.read_episode`), within half a quantum of LeRobot's 12-bit log quantizer."""
    task_dir, root, _ = real_dataset
    metres = LeRobotDataset("local/rlbench_reach_target", root=root, depth_output_unit="m")
    millimetres = LeRobotDataset("local/rlbench_reach_target", root=root)
    _, episodes = discover_episodes(task_dir)
    checked = 0
    for index, episode in enumerate(episodes):
        arrays = read_episode(episode, RLBENCH_CAMERAS)
        start = metres.meta.episodes[index]["dataset_from_index"]
        for t in (0, arrays.num_frames // 2, arrays.num_frames - 1):
            in_m, in_mm = metres[start + t], millimetres[start + t]
            for cam in RLBENCH_CAMERAS:
                info = metres.meta.features[depth_map_key(cam)]["info"]
                source = arrays.depth[cam][t].astype(np.float64)
                # RLBench's far planes (3.2-4.5 m) lie inside LeRobot's 0.01-10 m range; only pixels on the
                # 0.01 m near plane are clipped, and they read back as the range's end (invalid to the policy).
                kept = in_range(source, info)
                assert kept.mean() > 0.99, (cam, kept.mean())
                assert source.max() < info["video.depth_max"]
                read_m = in_m[depth_map_key(cam)][0].numpy().astype(np.float64)
                read_mm = in_mm[depth_map_key(cam)][0].numpy().astype(np.float64) / 1000
                for read, unit in ((read_m, "m"), (read_mm, "mm")):
                    error = np.abs(read - source)
                    bound = depth_read_back_bound(source, info, unit)
                    assert (error <= bound)[kept].all(), (cam, unit, (error - bound)[kept].max())
                np.testing.assert_allclose(read_m[~kept], info["video.depth_min"], rtol=1e-6)
                checked += 1
    assert checked == 2 * 3 * len(RLBENCH_CAMERAS)


@pytest.mark.slow
def test_lerobot_s_viewer_opens_a_converted_dataset(converted, tmp_path: Path) -> None:
    """`lerobot-dataset-viz --mode local --save 1` writes a rerun recording of an episode, depth maps included."""
    pytest.importorskip("rerun", reason="lerobot-dataset-viz needs LeRobot's `viz` extra (rerun-sdk)")
    root, _ = converted
    cmd = [
        sys.executable, "-m", "lerobot.scripts.lerobot_dataset_viz", f"--repo-id={REPO_ID}", f"--root={root}",
        "--episode-index=0", "--mode=local", "--save=1", f"--output-dir={tmp_path}", "--num-workers=0",
    ]  # fmt: skip
    result = subprocess.run(cmd, env=offline_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    recordings = list(tmp_path.glob("*.rrd"))
    assert len(recordings) == 1 and recordings[0].stat().st_size > 10_000
    recording = recordings[0].read_bytes()
    assert b"DepthImage" in recording and depth_map_key("front").encode() in recording  # logged as depth


@pytest.fixture(scope="module")
def training_dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The converted real demos, or synthetic ones where ../shared is absent."""
    try:
        _, root, _ = request.getfixturevalue("real_dataset")
        return "local/rlbench_reach_target", root
    except pytest.skip.Exception:
        pass
    raw, _ = write_task(tmp_path_factory.mktemp("train_raw"), episodes=2, num_frames=12, image_size=32)
    out = tmp_path_factory.mktemp("train_data") / "dataset"
    convert_rlbench(raw, out, repo_id=REPO_ID, progress=False)
    return REPO_ID, out


def test_lerobot_train_teacher_and_student_on_converted_demos(
    training_dataset, tmp_path_factory: pytest.TempPathFactory
) -> None:
    repo_id, root = training_dataset
    output_dir = tmp_path_factory.mktemp("train") / "teacher"
    cmd = [
        sys.executable, "-m", "lerobot.scripts.lerobot_train",
        "--policy.type=flowstep_teacher", "--policy.device=cpu", "--policy.push_to_hub=false",
        "--policy.encoder.vision_backbone=conv", "--policy.network.hidden_dim=64", "--policy.network.num_blocks=1",
        "--policy.pointcloud.cameras=[front,wrist]", "--policy.pointcloud.num_points=64",
        "--policy.n_obs_steps=1", "--policy.horizon=8", "--policy.n_action_steps=4",
        f"--dataset.repo_id={repo_id}", f"--dataset.root={root}", f"--output_dir={output_dir}",
        "--steps=2", "--batch_size=2", "--num_workers=0", "--save_freq=2", "--log_freq=1", "--env_eval_freq=0",
        "--wandb.enable=false", "--seed=0",
    ]  # fmt: skip
    result = subprocess.run(cmd, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = output_dir / "checkpoints" / "last" / "pretrained_model"
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["type"] == "flowstep_teacher" and config["pointcloud"]["cameras"] == ["front", "wrist"]
    assert config["output_features"]["action"]["shape"] == [8]
    assert "step:2" in result.stdout + result.stderr

    # The student distils from that teacher on the same converted data.
    student_dir = output_dir.parent / "student"
    lerobot_train(
        [
            *train_args("imle_student", repo_id, root, student_dir, steps=2, batch_size=2),
            f"--policy.teacher_path={checkpoint}",
            "--policy.num_teacher_samples=2",
            "--policy.num_student_samples=2",
            "--policy.teacher_num_inference_steps=1",
        ],
        output_dir.parent / "student.log",
    )
    student = json.loads((last_checkpoint(student_dir) / "config.json").read_text())
    assert student["type"] == "imle_student" and student["pointcloud"]["cameras"] == ["front", "wrist"]
