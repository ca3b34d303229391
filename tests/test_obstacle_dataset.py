"""Expert demonstration datasets: round trip through LeRobotDataset, atomic writes, argument checks."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from depth_codec import depth_read_back_bound, in_range
from lerobot.configs import FeatureType
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.utils.feature_utils import dataset_to_policy_features

from lerobot_flowstep.constants import depth_map_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.datasets import obstacle_dataset
from lerobot_flowstep.datasets.features import camera_frame, rgb_dtype
from lerobot_flowstep.datasets.obstacle_dataset import EXPERT_MODE, expert_episodes, generate_obstacle_dataset
from lerobot_flowstep.envs.expert import classify_trajectory
from lerobot_flowstep.envs.obstacle import ObstacleLayout

REPO_ID = "local/flowstep_obstacle_test"
CAMERA_ARGS = {"num_episodes": 4, "num_modes": 2, "camera": True, "image_size": 32, "seed": 3}


@pytest.fixture(scope="module")
def camera_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets") / "camera"
    assert generate_obstacle_dataset(root, repo_id=REPO_ID, **CAMERA_ARGS) == root
    return root


def test_round_trip_matches_expert(camera_dataset: Path) -> None:
    episodes = list(expert_episodes(**CAMERA_ARGS))
    dataset = LeRobotDataset(REPO_ID, root=camera_dataset)
    assert dataset.fps == 10
    assert dataset.num_episodes == len(episodes)
    assert len(dataset) == sum(ep.length for ep in episodes)

    raw = dataset.hf_dataset.with_format("numpy")
    actions = np.stack(raw["action"])
    states = np.stack(raw["observation.state"])
    modes = np.asarray(raw[EXPERT_MODE])
    episode_index = np.asarray(raw["episode_index"])
    for index, episode in enumerate(episodes):
        rows = episode_index == index
        np.testing.assert_array_equal(actions[rows], np.stack(episode.actions))
        np.testing.assert_array_equal(states[rows], np.stack([o["agent_pos"] for o in episode.observations[:-1]]))
        assert np.all(modes[rows] == episode.mode)
        # The recorded states are a trajectory of the mode stored beside them.
        assert classify_trajectory(episode.positions, ObstacleLayout.preset(2)) == episode.mode

    # RGB below 64 px is stored as PNG, losslessly; depth as LeRobot's depth video, read back in millimetres
    # within the quantizer's bound.
    first = episodes[0].observations[0]
    item = dataset[0]
    np.testing.assert_array_equal(
        (item[rgb_key("top")] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), first["pixels"]["top"]
    )
    info = dataset.meta.features[depth_map_key("top")]["info"]
    assert dataset.meta.features[depth_map_key("top")]["dtype"] == "video" and info["depth_unit"] == "m"
    metres = item[depth_map_key("top")].numpy().astype(np.float64) / 1000
    source = first["depth.top"].astype(np.float64)
    assert in_range(source, info).all()
    error = np.abs(metres - source)
    assert (error <= depth_read_back_bound(source, info, "mm")).all(), error.max()
    assert error.max() > 0  # a lossy store, so the bound is what is checked
    # The fixed camera's calibration travels in the depth map's info; no per-frame parameters.
    np.testing.assert_allclose(info["camera_intrinsics"], first["camera.top.intrinsics"], rtol=1e-6)
    np.testing.assert_allclose(info["camera_to_world"], first["camera.top.extrinsics"], rtol=1e-6, atol=1e-7)
    assert intrinsics_key("top") not in dataset.meta.features and extrinsics_key("top") not in dataset.meta.features


def test_item_keys_shapes_and_dtypes(camera_dataset: Path) -> None:
    dataset = LeRobotDataset(REPO_ID, root=camera_dataset)
    item = dataset[0]
    expected = {
        "observation.state": ((2,), torch.float32),
        "observation.environment_state": ((4,), torch.float32),
        "action": ((2,), torch.float32),
        EXPERT_MODE: ((), torch.int64),
        rgb_key("top"): ((3, 32, 32), torch.float32),
        depth_map_key("top"): ((1, 32, 32), torch.float32),
    }
    for key, (shape, dtype) in expected.items():
        assert tuple(item[key].shape) == shape and item[key].dtype == dtype, key
    assert isinstance(item["task"], str) and item["task"]
    assert float(item[depth_map_key("top")].min()) > 1000.0  # millimetres: the table is metres away

    # Policies see observations and the action, never the expert's mode.
    features = dataset_to_policy_features(dataset.meta.features)
    assert EXPERT_MODE not in features
    assert features[rgb_key("top")].type is FeatureType.VISUAL
    assert features[rgb_key("top")].shape == (3, 32, 32)
    assert features["observation.environment_state"].type is FeatureType.ENV
    assert dataset.meta.depth_keys == [depth_map_key("top")]  # LeRobot's own view: a depth map
    assert features["action"].type is FeatureType.ACTION


def test_depth_as_images_is_exact_and_the_policy_reads_either_storage(tmp_path: Path, camera_dataset: Path) -> None:
    from lerobot.policies.factory import make_policy

    from lerobot_flowstep.constants import depth_key
    from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig

    args = {**CAMERA_ARGS, "num_episodes": 1}
    root = generate_obstacle_dataset(tmp_path / "images", repo_id=REPO_ID, depth_storage="image", **args)
    dataset = LeRobotDataset(REPO_ID, root=root, depth_output_unit="m")
    assert dataset.meta.features[depth_map_key("top")]["dtype"] == "image"
    first = next(iter(expert_episodes(**args))).observations[0]
    np.testing.assert_array_equal(dataset[0][depth_map_key("top")].numpy(), first["depth.top"])
    for source in (root, camera_dataset):
        config = FlowstepTeacherConfig(device="cpu", horizon=8, n_action_steps=4)
        config.pointcloud.cameras, config.pointcloud.num_points = ["top"], 32
        make_policy(config, ds_meta=LeRobotDataset(REPO_ID, root=source).meta)
        assert depth_key("top") in config.input_features and depth_map_key("top") not in config.input_features
        calibration = config.pointcloud.fixed_cameras["top"]
        np.testing.assert_allclose(calibration["intrinsics"], first["camera.top.intrinsics"], rtol=1e-6)


def test_rgb_video_needs_64_pixels_and_a_fixed_camera_must_not_move() -> None:
    assert rgb_dtype("auto", 32, 32) == "image" and rgb_dtype("auto", 64, 128) == "video"
    with pytest.raises(ValueError, match="at least 64 px"):
        rgb_dtype("video", 48, 64)
    k, t = np.diag([50.0, 50.0, 1.0]), np.eye(4)
    k[:2, 2] = 16
    calibration = {"camera_intrinsics": k.tolist(), "camera_to_world": t.tolist()}
    rgb, depth = np.zeros((32, 32, 3), np.uint8), np.ones((1, 32, 32), np.float32)
    frame = camera_frame("top", rgb, depth, k, t, calibration)
    assert frame[depth_map_key("top")].shape == (32, 32, 1) and intrinsics_key("top") not in frame
    moved = t.copy()
    moved[0, 3] = 0.01
    with pytest.raises(ValueError, match="Camera 'top' is written as a fixed camera.*camera_to_world"):
        camera_frame("top", rgb, depth, k, moved, calibration)
    assert set(camera_frame("top", rgb, depth, k, moved)) == {
        rgb_key("top"),
        depth_map_key("top"),
        intrinsics_key("top"),
        extrinsics_key("top"),
    }


def test_action_chunks_with_delta_timestamps(camera_dataset: Path) -> None:
    horizon = 8
    dataset = LeRobotDataset(
        REPO_ID,
        root=camera_dataset,
        delta_timestamps={"action": [i / 10 for i in range(horizon)], "observation.state": [-0.1, 0.0]},
    )
    item = dataset[0]
    assert tuple(item["action"].shape) == (horizon, 2)
    assert tuple(item["observation.state"].shape) == (2, 2)
    assert item["observation.state_is_pad"].tolist() == [True, False]
    assert not bool(item["action_is_pad"].any())
    raw_actions = np.stack(dataset.hf_dataset.with_format("numpy")["action"][:horizon])
    np.testing.assert_array_equal(item["action"].numpy(), raw_actions)

    last = dataset[dataset.meta.episodes[0]["dataset_to_index"] - 1]
    assert last["action_is_pad"].tolist() == [False] + [True] * (horizon - 1)


def test_without_camera_four_modes_and_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    generate_obstacle_dataset(root, repo_id=REPO_ID, num_episodes=3, num_modes=4, seed=1)
    dataset = LeRobotDataset(REPO_ID, root=root)
    assert set(dataset.meta.features) >= {"observation.state", "observation.environment_state", "action", EXPERT_MODE}
    assert not any(
        key.startswith(("observation.images", "observation.depth", "observation.camera"))
        for key in dataset.meta.features
    )
    assert tuple(dataset[0]["observation.environment_state"].shape) == (6,)
    frames_before = len(dataset)

    with pytest.raises(FileExistsError, match=str(root)):
        generate_obstacle_dataset(root, repo_id=REPO_ID, num_episodes=1)

    generate_obstacle_dataset(root, repo_id=REPO_ID, num_episodes=1, num_modes=4, seed=1, overwrite=True)
    replaced = LeRobotDataset(REPO_ID, root=root)
    assert replaced.num_episodes == 1 and len(replaced) < frames_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [({"num_modes": 3}, "3"), ({"num_episodes": 0}, "0"), ({"num_episodes": -2}, "-2")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, value: str) -> None:
    with pytest.raises(ValueError, match=value):
        generate_obstacle_dataset(tmp_path / "bad", **kwargs)
    assert list(tmp_path.iterdir()) == []


def _interrupt_on_second_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    original = LeRobotDataset.save_episode
    calls = {"n": 0}

    def save_episode(self: LeRobotDataset, *args, **kwargs) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        original(self, *args, **kwargs)

    monkeypatch.setattr(obstacle_dataset.LeRobotDataset, "save_episode", save_episode)


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _interrupt_on_second_episode(monkeypatch)
    root = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        generate_obstacle_dataset(root, repo_id=REPO_ID, num_episodes=3, camera=True, image_size=16)
    gc.collect()  # a dangling dataset writer flushing on collection must not recreate anything
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_previous_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "kept"
    generate_obstacle_dataset(root, repo_id=REPO_ID, num_episodes=2)
    _interrupt_on_second_episode(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        generate_obstacle_dataset(root, repo_id=REPO_ID, num_episodes=3, overwrite=True)
    gc.collect()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert LeRobotDataset(REPO_ID, root=root).num_episodes == 2


def test_expert_episodes_close_their_env_when_stopped_early(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = []
    monkeypatch.setattr(obstacle_dataset.ObstacleReachEnv, "close", lambda self: closed.append(True))
    episodes = expert_episodes(3)
    next(episodes)
    episodes.close()  # what `generate_obstacle_dataset` does when a write fails mid-way
    assert closed == [True]


def test_our_commands_never_ask_lerobot_for_its_noisy_default_decoder(tmp_path: Path, monkeypatch) -> None:
    # Without a system FFmpeg, each call of LeRobot's default prints torchcodec's failure: ~60 traceback lines.
    import lerobot.datasets.lerobot_dataset as lerobot_dataset
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
    from lerobot_flowstep.tools.training import load_samples

    def consulted() -> str:
        raise AssertionError("LeRobot's default decoder was consulted")

    monkeypatch.setattr(lerobot_dataset, "get_safe_default_video_backend", consulted)
    root = generate_obstacle_dataset(tmp_path / "d", num_episodes=2, camera=True, image_size=16)

    meta = LeRobotDatasetMetadata("local/flowstep_obstacle", root=root)
    config = FlowstepTeacherConfig(device="cpu")
    samples = load_samples("local/flowstep_obstacle", root, config, meta, observation_keys=["observation.state"])
    assert samples["action"].shape[0] == meta.total_frames


def test_the_quiet_decoder_choice_is_lerobot_s(monkeypatch, caplog) -> None:
    from lerobot_flowstep.datasets import video

    def torchcodec_without_ffmpeg(name: str):
        raise RuntimeError("Could not load libtorchcodec. Likely causes:\n  1. FFmpeg is not properly installed")

    monkeypatch.setattr(video.importlib, "import_module", torchcodec_without_ffmpeg)
    with caplog.at_level("INFO", logger=video.__name__):
        assert video.video_backend.__wrapped__() == "pyav"
    assert [r.getMessage() for r in caplog.records] == [
        "Decoding videos with pyav: torchcodec does not load (Could not load libtorchcodec. Likely causes:)."
    ]
    monkeypatch.setattr(video.importlib, "import_module", lambda name: None)
    assert video.video_backend.__wrapped__() == "torchcodec"
