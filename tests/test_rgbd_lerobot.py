"""RGB-D as LeRobot records it: a depth camera `top_depth` in uint16 millimetres (or float metres), recorded with
LeRobot's own API, no calibration recorded (`tests/lerobot_recording.py`)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from lerobot.policies.factory import make_policy, make_pre_post_processors
from lerobot_recording import REPO_ID, record_rgbd_dataset

from lerobot_flowstep.cli import main as flowstep_cli
from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_key
from lerobot_flowstep.core.configuration_encoder import EncoderConfig
from lerobot_flowstep.datasets.calibration import calibrate_dataset
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.processor.pointcloud import PointCloudConfig

DEPTH_MAP = "observation.images.top_depth"
BOUNDS = {"bounds_low": [-1.2, -1.2, -0.05], "bounds_high": [1.2, 1.2, 0.5]}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The same two episodes recorded in millimetres and in metres, plus the camera's true calibration."""
    base = tmp_path_factory.mktemp("recorded")
    mm, intrinsics, extrinsics = record_rgbd_dataset(base / "mm", depth_unit="mm")
    metres, _, _ = record_rgbd_dataset(base / "m", depth_unit="m")
    return {"mm": mm, "m": metres, "intrinsics": intrinsics, "extrinsics": extrinsics}


def _copy(recorded, unit, tmp_path, calibrated=True):
    root = tmp_path / unit
    shutil.copytree(recorded[unit], root)
    if calibrated:
        calibrate_dataset(root, "top", recorded["intrinsics"].ravel(), recorded["extrinsics"].ravel())
    return root


def _policy(root, **config):
    # As lerobot-train: the dataset's own metadata, whose depth stats LeRobot rescales to the unit it reads in.
    meta = LeRobotDataset(REPO_ID, root=root).meta
    cfg = FlowstepTeacherConfig(
        device="cpu", encoder=EncoderConfig(vision_backbone="conv"), horizon=8, n_action_steps=4, **config
    )
    policy = make_policy(cfg, ds_meta=meta)
    preprocessor, _ = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    return policy, preprocessor, cfg


def _batch(root, cfg, indices=(3, 11, 40)):
    meta = LeRobotDatasetMetadata(REPO_ID, root=root)
    dataset = LeRobotDataset(REPO_ID, root=root, delta_timestamps=resolve_delta_timestamps(cfg, meta))
    return torch.utils.data.default_collate([dataset[i] for i in indices])


def test_a_depth_map_is_metric_depth_and_never_reaches_the_rgb_backbone(recorded, tmp_path):
    root = _copy(recorded, "mm", tmp_path, calibrated=False)
    policy, preprocessor, cfg = _policy(root)
    assert DEPTH_MAP not in cfg.input_features and depth_key("top") in cfg.input_features
    assert policy.encoder.rgb_keys == ["observation.images.top"]
    assert cfg.depth_maps == {DEPTH_MAP: [0.01, 10.0]}
    seen = []
    backbone = policy.encoder.rgb_encoders["shared"]
    backbone.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    batch = preprocessor(_batch(root, cfg))
    assert DEPTH_MAP not in batch
    # Metres along the optical axis: the camera hangs 3.35 m from the table plane it looks at.
    depth = batch[depth_key("top")]
    assert depth.shape == (3, 2, 1, 64, 64) and 2.5 < depth[depth > 0].min() and depth.max() < 4.5
    loss, _ = policy.forward(batch)
    assert torch.isfinite(loss)
    assert seen == [(3 * 2, 3, 64, 64)], seen  # one RGB camera, 3 channels, every frame of the history


def _cloud(recorded, unit, tmp_path, **config):
    root = _copy(recorded, unit, tmp_path)
    pointcloud = PointCloudConfig(cameras=["top"], num_points=256, sampler="torch", **BOUNDS)
    _, preprocessor, cfg = _policy(root, pointcloud=pointcloud, **config)
    return preprocessor(_batch(root, cfg, indices=(5,)))[OBS_POINTCLOUD][0, -1], cfg


def _reference_points(recorded, index=5):
    """Frame `index` of the recording back-projected with plain pinhole algebra in numpy, from the env's own
    float depth in metres (not from the dataset)."""
    from lerobot_flowstep.datasets.obstacle_dataset import expert_episodes

    episode = next(iter(expert_episodes(1, camera=True, image_size=64, seed=0)))
    depth = episode.observations[index]["depth.top"][0].astype(np.float64)
    k, t = recorded["intrinsics"], recorded["extrinsics"]
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    camera = np.stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z, np.ones_like(z)])
    world = (t @ camera)[:3].T
    low, high = np.array(BOUNDS["bounds_low"]), np.array(BOUNDS["bounds_high"])
    return world[((world >= low) & (world <= high)).all(axis=1)]


def test_the_same_scene_in_millimetres_and_in_metres_gives_the_same_cloud(recorded, tmp_path):
    from_mm, cfg = _cloud(recorded, "mm", tmp_path / "a")
    from_m, _ = _cloud(recorded, "m", tmp_path / "b")
    assert cfg.pointcloud.fixed_cameras["top"]["intrinsics"] == recorded["intrinsics"].tolist()
    reference = torch.from_numpy(_reference_points(recorded)).float()
    for cloud in (from_mm, from_m):
        # Every point lies on the true surface, within the depth codec's quantum (a few mm at 3-4 m) plus
        # the millimetre rounding: a cloud 1,000 times too large or too small is far off.
        nearest = torch.cdist(cloud, reference).min(dim=1).values
        assert nearest.max() < 0.01, nearest.max()
        assert (cloud.amax(0) - cloud.amin(0)).max() > 0.5  # spread over the table, not collapsed
    # The two differ by the codec's rounding only; farthest-point sampling may then take another path here and
    # there, so most points, not all, coincide.
    assert torch.cdist(from_mm, from_m).min(dim=1).values.quantile(0.9) < 0.005


def test_a_depth_unit_that_does_not_fit_the_data_is_refused(recorded, tmp_path):
    with pytest.raises(ValueError, match=r"reaches 4\d{3}(\.\d+)? m .* read in 'm' .* it is in 'mm'"):
        _cloud(recorded, "mm", tmp_path, depth_unit="m")


def test_a_missing_calibration_names_the_camera_and_the_ways_to_give_one(recorded, tmp_path):
    root = _copy(recorded, "mm", tmp_path, calibrated=False)
    with pytest.raises(ValueError, match=r"No calibration for camera 'top'.*lerobot-flowstep calibrate.*fixed_cameras"):
        _policy(root, pointcloud=PointCloudConfig(cameras=["top"], num_points=64))


def test_calibrate_writes_the_calibration_lerobot_keeps_and_the_policy_picks_up(recorded, tmp_path):
    root = _copy(recorded, "mm", tmp_path, calibrated=False)
    k, t = recorded["intrinsics"], recorded["extrinsics"]
    # A ROS camera_info file for the intrinsics, numbers for the extrinsics.
    ros = tmp_path / "top.yaml"
    ros.write_text(
        "image_width: 64\nimage_height: 64\ncamera_name: top\n"
        f"camera_matrix:\n  rows: 3\n  cols: 3\n  data: {k.ravel().tolist()}\n"
    )
    argv = ["calibrate", "--dataset-root", str(root), "--camera", "top", "--calibration-file", str(ros)]
    assert flowstep_cli([*argv, "--extrinsics", *map(str, t.ravel())]) == 0
    info = json.loads((root / "meta" / "info.json").read_text())["features"][DEPTH_MAP]["info"]
    assert info["camera_intrinsics"] == k.tolist() and info["camera_to_world"] == t.tolist()
    assert info["is_depth_map"] and info["depth_unit"] == "mm"  # LeRobot's own entries are kept
    assert LeRobotDatasetMetadata(REPO_ID, root=root).depth_keys == [DEPTH_MAP]
    _, _, cfg = _policy(root, pointcloud=PointCloudConfig(cameras=["top"], num_points=64))
    assert cfg.pointcloud.fixed_cameras["top"] == {"intrinsics": k.tolist(), "extrinsics": t.tolist()}

    # An OpenCV FileStorage file with both matrices.
    import cv2

    opencv = tmp_path / "top_opencv.yaml"
    storage = cv2.FileStorage(str(opencv), cv2.FILE_STORAGE_WRITE)
    storage.write("camera_matrix", k * 2)
    storage.write("camera_to_world", t)
    storage.release()
    assert (
        flowstep_cli(["calibrate", "--dataset-root", str(root), "--camera", "top", "--calibration-file", str(opencv)])
        == 0
    )
    info = json.loads((root / "meta" / "info.json").read_text())["features"][DEPTH_MAP]["info"]
    assert info["camera_intrinsics"][0][0] == pytest.approx(2 * k[0, 0])


@pytest.mark.parametrize(
    ("camera", "intrinsics", "extrinsics", "message"),
    [
        ("front", None, None, r"no depth map 'observation.images.front_depth' for camera 'front'"),
        ("top", [100, 0, 500, 0, 100, 32, 0, 0, 1], None, r"principal point \(500, 32\) .* outside its 64x64"),
        ("top", [0, 0, 32, 0, 100, 32, 0, 0, 1], None, r"camera 'top .*zero focal length"),
        ("top", None, [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1], r"not a rigid transform"),
        ("top", [100, 0, 32, 0, 100, 32, 0, 0, 1], "missing", r"missing: \['camera-to-world extrinsics'\]"),
    ],
)
def test_calibrate_refuses_bad_calibrations_and_leaves_info_json_as_it_was(
    recorded, tmp_path, capsys, camera, intrinsics, extrinsics, message
):
    root = _copy(recorded, "mm", tmp_path, calibrated=False)
    before = (root / "meta" / "info.json").read_bytes()
    k = intrinsics if intrinsics is not None else recorded["intrinsics"].ravel().tolist()
    argv = ["calibrate", "--dataset-root", str(root), "--camera", camera, "--intrinsics", *map(str, k)]
    if extrinsics != "missing":
        t = extrinsics if extrinsics is not None else recorded["extrinsics"].ravel().tolist()
        argv += ["--extrinsics", *map(str, t)]
    assert flowstep_cli(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert (root / "meta" / "info.json").read_bytes() == before


@pytest.mark.slow
def test_a_lerobot_recorded_rgbd_dataset_trains_caches_distils_and_evaluates(recorded, tmp_path):
    """The whole method on a dataset recorded as a LeRobot user records one, with LeRobot's commands: the teacher
    on point cloud + state (+ RGB), its cache, the student, and `lerobot-eval` on the embedded task's camera, whose
    env gives metric depth and per-frame camera parameters."""
    from lerobot_flowstep.tools.cache_teacher import build_teacher_cache
    from lerobot_flowstep.tools.lerobot_commands import (
        eval_args,
        last_checkpoint,
        lerobot_eval,
        lerobot_train,
        train_args,
    )

    root = _copy(recorded, "mm", tmp_path)
    pointcloud = [
        "--policy.pointcloud.cameras=[top]",
        "--policy.pointcloud.num_points=64",
        f"--policy.pointcloud.bounds_low={BOUNDS['bounds_low']}",
        f"--policy.pointcloud.bounds_high={BOUNDS['bounds_high']}",
    ]
    small = ["--policy.horizon=8", "--policy.n_action_steps=4", "--policy.network.hidden_dim=64"]
    small += ["--policy.encoder.vision_backbone=conv"]
    checkpoints = {}
    for name, policy_type, extra in (
        ("teacher", "flowstep_teacher", [*small, *pointcloud]),
        ("student", "imle_student", None),
    ):
        if extra is None:
            cache = tmp_path / "cache.safetensors"
            build_teacher_cache(checkpoints["teacher"], REPO_ID, root, cache, num_samples=4, num_steps=2)
            extra = [
                f"--policy.teacher_path={checkpoints['teacher']}",
                f"--policy.teacher_cache_path={cache}",
                "--policy.num_teacher_samples=4",
                "--policy.num_student_samples=4",
            ]
        lerobot_train(
            [*train_args(policy_type, REPO_ID, root, tmp_path / name, steps=3, batch_size=4), *extra],
            tmp_path / f"{name}.log",
            total_steps=3,
        )
        checkpoints[name] = last_checkpoint(tmp_path / name)
        config = json.loads((checkpoints[name] / "config.json").read_text())
        assert DEPTH_MAP not in config["input_features"] and depth_key("top") in config["input_features"]
        assert config["depth_maps"] == {DEPTH_MAP: [0.01, 10.0]} and config["depth_unit"] == "mm"
        assert config["pointcloud"]["fixed_cameras"]["top"]["intrinsics"] == recorded["intrinsics"].tolist()
        steps = json.loads((checkpoints[name] / "policy_preprocessor.json").read_text())["steps"]
        assert [s["registry_name"] for s in steps if s.get("registry_name", "").startswith("flowstep")] == [
            "flowstep_observation_check",
            "flowstep_depth_maps",
            "flowstep_pointcloud",
        ]
    for name, checkpoint in checkpoints.items():
        info = lerobot_eval(
            [*eval_args(checkpoint, "flowstep_obstacle", 2, 2, seed=7), "--env.camera=true", "--env.image_size=64"],
            tmp_path / f"eval_{name}",
            tmp_path / f"eval_{name}.log",
        )
        assert info["overall"]["n_episodes"] == 2
