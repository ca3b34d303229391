"""`convert zarr`: Diffusion Policy / DP3 replay buffers -> LeRobotDataset, PushT env state, bad input."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import shared_path
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from lerobot_flowstep.datasets.zarr import (
    MAPPING_PRESETS,
    PUSHT_TASK,
    ArrayMapping,
    ZarrFormatError,
    convert_zarr,
    pusht_environment_state,
)
from lerobot_flowstep.datasets.zarr_cli import add_convert_zarr_parser

REPO_ID = "local/zarr_test"
PUSHT_ENDS = np.array([5, 12, 20])
DP3_ENDS = np.array([4, 9])


def write_replay_buffer(path: Path, arrays: dict[str, np.ndarray], episode_ends: np.ndarray) -> Path:
    """A zarr v2 store laid out like Diffusion Policy's ReplayBuffer, blosc-compressed as DP writes it."""
    import numcodecs

    group = zarr.open_group(path, mode="w", zarr_format=2)
    compressor = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    data = group.create_group("data")
    for name, values in arrays.items():
        chunks = (7, *values.shape[1:])  # chunks that straddle episode boundaries, as in DP's stores
        data.create_array(name, data=values, chunks=chunks, compressors=compressor)
    group.create_group("meta").create_array("episode_ends", data=np.asarray(episode_ends), chunks=(4,))
    return path


def pusht_like_arrays(num_frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = np.concatenate(
        [rng.uniform(0, 512, (num_frames, 4)), rng.uniform(0, 2 * np.pi, (num_frames, 1))], axis=1
    ).astype(np.float32)
    return {
        # DP stores PushT images as float32 in [0, 255].
        "img": rng.integers(0, 256, (num_frames, 16, 16, 3)).astype(np.float32),
        "state": state,
        "action": rng.uniform(0, 512, (num_frames, 2)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, (num_frames, 9, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, (num_frames, 1)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def pusht_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = pusht_like_arrays(int(PUSHT_ENDS[-1]))
    path = write_replay_buffer(tmp_path_factory.mktemp("zarr") / "pusht_like.zarr", arrays, PUSHT_ENDS)
    return path, arrays


def _images_uint8(dataset: LeRobotDataset, key: str) -> np.ndarray:
    # LeRobot returns images as float CHW in [0, 1]; PNG storage makes the round trip exact.
    return np.stack([np.rint(dataset[i][key].numpy().transpose(1, 2, 0) * 255) for i in range(len(dataset))])


def _column(dataset: LeRobotDataset, key: str) -> np.ndarray:
    return np.stack(dataset.hf_dataset.with_format("numpy")[key])


def test_pusht_keypoints_round_trip(pusht_store: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    path, arrays = pusht_store
    summary = convert_zarr(
        path,
        tmp_path / "out",
        mapping="pusht_keypoints",
        extra_mappings=["data/img=observation.image", "n_contacts=contacts"],
        repo_id=REPO_ID,
        progress=False,
    )
    assert (summary.num_episodes, summary.num_frames, summary.episodes_in_store) == (3, 20, 3)
    assert not [p for p in tmp_path.iterdir() if p.name != "out"], "staging folder left behind"

    dataset = LeRobotDataset(REPO_ID, root=tmp_path / "out")
    assert dataset.fps == 10 and dataset.num_episodes == 3 and len(dataset) == 20
    assert dataset.meta.info.robot_type == "2d pointer"
    episodes = dataset.meta.episodes
    np.testing.assert_array_equal(episodes["dataset_to_index"], PUSHT_ENDS)
    np.testing.assert_array_equal(episodes["dataset_from_index"], [0, *PUSHT_ENDS[:-1]])
    np.testing.assert_array_equal(_column(dataset, "episode_index"), np.repeat([0, 1, 2], np.diff([0, *PUSHT_ENDS])))
    np.testing.assert_array_equal(_column(dataset, "frame_index")[5:12], np.arange(7))

    features = dataset.meta.features
    assert features["observation.environment_state"]["shape"] == (16,)
    assert features["observation.image"]["dtype"] == "image"
    assert features["contacts"]["dtype"] == "float32"
    np.testing.assert_array_equal(_column(dataset, "observation.state"), arrays["state"][:, :2])
    np.testing.assert_array_equal(_column(dataset, "action"), arrays["action"])
    # LeRobot stores a (1,) feature as a scalar column.
    np.testing.assert_array_equal(_column(dataset, "contacts"), arrays["n_contacts"][:, 0])
    np.testing.assert_allclose(
        _column(dataset, "observation.environment_state"),
        pusht_environment_state(arrays["state"][:, 2:5]),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(_images_uint8(dataset, "observation.image"), arrays["img"])
    assert dataset[0]["task"] == PUSHT_TASK


def test_dp3_point_cloud_mapping(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = int(DP3_ENDS[-1])
    xyz = rng.normal(size=(n, 32, 3))
    rgb = rng.integers(0, 256, (n, 32, 3))
    arrays = {
        "point_cloud": np.concatenate([xyz, rgb], axis=-1).astype(np.float32),
        "state": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.normal(size=(n, 3)).astype(np.float32),
        "img": rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8),  # channel-first, as some DP3 tasks store it
        "depth": rng.uniform(0.2, 2.0, (n, 8, 8)).astype(np.float32),
    }
    store = write_replay_buffer(tmp_path / "dp3_like.zarr", arrays, DP3_ENDS)
    summary = convert_zarr(
        store,
        tmp_path / "out",
        mapping="dp3",
        extra_mappings=["data/img=observation.images.front", "data/depth=observation.depth.front"],
        repo_id=REPO_ID,
        fps=15,
        task="reach the goal",
        progress=False,
    )
    assert summary.num_frames == n
    dataset = LeRobotDataset(REPO_ID, root=tmp_path / "out")
    assert dataset.fps == 15 and dataset.num_episodes == 2
    cloud = _column(dataset, "observation.pointcloud")
    assert cloud.shape == (n, 32, 6) and cloud.dtype == np.float32
    np.testing.assert_allclose(cloud[..., :3], xyz.astype(np.float32))
    # Colours go to the plugin's [0, 1] convention.
    np.testing.assert_allclose(cloud[..., 3:], rgb / 255.0, rtol=1e-6)
    np.testing.assert_allclose(_column(dataset, "observation.depth.front"), arrays["depth"][:, None])
    np.testing.assert_array_equal(_column(dataset, "observation.state"), arrays["state"])
    np.testing.assert_array_equal(
        _images_uint8(dataset, "observation.images.front"), arrays["img"].transpose(0, 2, 3, 1)
    )

    # A column slice keeps xyz only, replacing the preset's entry for the same key.
    convert_zarr(
        store,
        tmp_path / "xyz",
        mapping="dp3",
        extra_mappings=["data/point_cloud[:3]=observation.pointcloud", "state[1:3]=observation.state"],
        fps=15,
        task="reach the goal",
        max_episodes=1,
        progress=False,
    )
    xyz_only = LeRobotDataset("local/dp3_like", root=tmp_path / "xyz")
    assert xyz_only.num_episodes == 1 and len(xyz_only) == DP3_ENDS[0]
    assert xyz_only.meta.features["observation.state"]["names"] == ["state_1", "state_2"]
    np.testing.assert_allclose(_column(xyz_only, "observation.pointcloud"), xyz[: DP3_ENDS[0]].astype(np.float32))
    np.testing.assert_array_equal(_column(xyz_only, "observation.state"), arrays["state"][: DP3_ENDS[0], 1:3])


def test_video_storage(tmp_path: Path) -> None:
    n = int(PUSHT_ENDS[-1])
    gradient = np.linspace(0, 255, 32, dtype=np.float32)[None, None, :, None]
    arrays = pusht_like_arrays(n) | {"img": np.broadcast_to(gradient, (n, 32, 32, 3)).copy()}
    store = write_replay_buffer(tmp_path / "video.zarr", arrays, PUSHT_ENDS)
    convert_zarr(store, tmp_path / "out", mapping="pusht", video=True, repo_id=REPO_ID, progress=False)
    dataset = LeRobotDataset(REPO_ID, root=tmp_path / "out")
    assert dataset.meta.features["observation.image"]["dtype"] == "video"
    assert list((tmp_path / "out" / "videos").rglob("*.mp4"))
    decoded = dataset[13]["observation.image"].numpy().transpose(1, 2, 0) * 255
    assert np.abs(decoded - arrays["img"][13]).mean() < 8  # lossy codec

    small = write_replay_buffer(tmp_path / "small.zarr", pusht_like_arrays(n), PUSHT_ENDS)
    with pytest.raises(ZarrFormatError, match="16x16 images are too small for video encoding"):
        convert_zarr(small, tmp_path / "small_out", mapping="pusht", video=True, progress=False)
    assert not (tmp_path / "small_out").exists()


def test_cli_converts_and_summarises(
    pusht_store: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_convert_zarr_parser(parser.add_subparsers(dest="convert_format", required=True))
    args = parser.parse_args(
        ["zarr", "--input", str(pusht_store[0]), "--output", str(tmp_path / "out"), "--mapping", "pusht"]
        + ["--episodes", "2", "--repo-id", REPO_ID, "--map", "data/keypoint=observation.keypoint"]
    )
    args.func(args)
    out = capsys.readouterr().out
    assert "Wrote 2 episodes (12 frames; the store holds 3)" in out
    assert "observation.keypoint: float32 (9, 2)" in out
    dataset = LeRobotDataset(REPO_ID, root=tmp_path / "out")
    assert set(dataset.meta.features) >= {"observation.image", "observation.state", "action", "observation.keypoint"}


def _broken_store(tmp_path: Path, case: str) -> Path:
    arrays = pusht_like_arrays(20)
    ends = PUSHT_ENDS
    if case == "missing_array":
        del arrays["action"]
    elif case == "short_array":
        ends = np.array([5, 12, 21])
    elif case == "non_monotonic":
        ends = np.array([5, 4, 20])
    path = write_replay_buffer(tmp_path / f"{case}.zarr", arrays, ends)
    if case == "missing_episode_ends":
        zarr.open_group(path, mode="a")["meta"].__delitem__("episode_ends")
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_array", r"array 'data/action' is missing \(arrays under data: img, keypoint, n_contacts, state\)"),
        ("short_array", r"'data/(img|state)' has 20 frames but 'meta/episode_ends' ends at 21"),
        ("non_monotonic", r"'meta/episode_ends' must be strictly increasing, but episode 1 ends at frame 4"),
        ("missing_episode_ends", r"array 'meta/episode_ends' is missing"),
    ],
)
def test_bad_store_is_named(tmp_path: Path, case: str, message: str) -> None:
    store = _broken_store(tmp_path, case)
    with pytest.raises(ZarrFormatError, match=message):
        convert_zarr(store, tmp_path / "out", mapping="pusht", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == [store.name], "nothing but the input may remain"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"mapping": "pushtt"}, ZarrFormatError, "unknown mapping 'pushtt'; known mappings: pusht, pusht_keypoints"),
        ({"mapping": None}, ZarrFormatError, "nothing to convert"),
        ({"extra_mappings": ["data/state=>observation.state"]}, ZarrFormatError, "bad mapping"),
        ({"extra_mappings": ["data/state=index"]}, ZarrFormatError, "'index' is filled in by LeRobot"),
        ({"extra_mappings": ["state[7:9]=observation.x"]}, ZarrFormatError, r"'data/state' \(-> observation.x\)"),
        ({"extra_mappings": ["data/state=observation.image"]}, ZarrFormatError, "images must be"),
        ({"extra_mappings": ["data/keypoint=observation.pointcloud"]}, ZarrFormatError, "point clouds must be"),
        ({"mapping": None, "extra_mappings": ["data/state=observation.state"]}, ZarrFormatError, "fps must be"),
        ({"max_episodes": 0}, ZarrFormatError, "max_episodes must be at least 1"),
    ],
)
def test_bad_arguments(
    pusht_store: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, kwargs: dict, error: type, message: str
) -> None:
    kwargs = {"mapping": "pusht", **kwargs}
    with pytest.raises(error, match=message):
        convert_zarr(pusht_store[0], tmp_path / "out", progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_missing_store_and_existing_output(pusht_store: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="zarr store not found: .*nowhere.zarr"):
        convert_zarr(tmp_path / "nowhere.zarr", tmp_path / "out", mapping="pusht")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match=r"dataset folder already exists: .*out \(pass overwrite"):
        convert_zarr(pusht_store[0], tmp_path / "out", mapping="pusht")
    with pytest.raises(ZarrFormatError, match="would replace the input"):
        convert_zarr(pusht_store[0], pusht_store[0].parent, mapping="pusht", overwrite=True)


def _interrupt_on_second_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    original = LeRobotDataset.save_episode
    calls = {"n": 0}

    def save_episode(self: LeRobotDataset, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        original(self, *args, **kwargs)

    monkeypatch.setattr(LeRobotDataset, "save_episode", save_episode)


def test_interrupted_conversion_leaves_nothing(
    pusht_store: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_on_second_episode(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        convert_zarr(pusht_store[0], tmp_path / "out", mapping="pusht", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_previous_dataset(
    pusht_store: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "out"
    convert_zarr(pusht_store[0], root, mapping="pusht_keypoints", max_episodes=1, repo_id=REPO_ID, progress=False)
    _interrupt_on_second_episode(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        convert_zarr(pusht_store[0], root, mapping="pusht", overwrite=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    kept = LeRobotDataset(REPO_ID, root=root)
    assert kept.num_episodes == 1 and "observation.environment_state" in kept.meta.features
    monkeypatch.undo()
    convert_zarr(pusht_store[0], root, mapping="pusht", overwrite=True, repo_id=REPO_ID, progress=False)
    assert LeRobotDataset(REPO_ID, root=root).num_episodes == 3


def test_zipped_store(pusht_store: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    # Diffusion Policy also distributes replay buffers as zip files of the store's keys.
    path, arrays = pusht_store
    zipped = Path(shutil.make_archive(str(tmp_path / "pusht_like.zarr"), "zip", root_dir=path))
    summary = convert_zarr(zipped, tmp_path / "out", mapping="pusht", max_episodes=1, progress=False)
    assert summary.repo_id == "local/pusht_like" and summary.num_frames == PUSHT_ENDS[0]
    dataset = LeRobotDataset(summary.repo_id, root=tmp_path / "out")
    np.testing.assert_array_equal(_column(dataset, "action"), arrays["action"][: PUSHT_ENDS[0]])


def test_mapping_parse() -> None:
    assert ArrayMapping.parse("data/point_cloud[:3]=observation.pointcloud") == ArrayMapping(
        "data/point_cloud", "observation.pointcloud", columns=(None, 3)
    )
    assert ArrayMapping.parse("state[2:5]=observation.environment_state").columns == (2, 5)
    assert ArrayMapping.parse("meta/foo=foo").source == "meta/foo"
    assert {"pusht", "pusht_keypoints", "dp3"} <= set(MAPPING_PRESETS)


def test_pusht_environment_state_geometry() -> None:
    # Unrotated at the origin: gym-pusht's corner list (bar, then stem) as [x0, y0, x1, y1, ...].
    np.testing.assert_array_equal(
        pusht_environment_state(np.zeros(3)),
        [-60, 0, 60, 0, 60, 30, -60, 30, -15, 30, 15, 30, 15, 120, -15, 120],
    )
    # A quarter turn maps body (x, y) to (-y, x) about the body origin.
    turned = pusht_environment_state(np.array([100.0, 200.0, np.pi / 2])).reshape(8, 2)
    np.testing.assert_allclose(turned[6], [100 - 120, 200 + 15], atol=1e-9)
    assert pusht_environment_state(np.zeros((4, 7, 3))).shape == (4, 7, 16)


def test_pusht_environment_state_matches_gym_pusht() -> None:
    pusht = pytest.importorskip("gym_pusht.envs.pusht", reason="gym-pusht is not installed (extra 'pusht')")
    env = pusht.PushTEnv(obs_type="environment_state_agent_pos")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.uniform(50, 450, (20, 2)), rng.uniform(0, 2 * np.pi, (20, 1))], axis=1)
    for pose in poses:
        # Angle first: pymunk rotates a body about its centre of gravity, so setting the angle after
        # the position would move the body origin away from the pose.
        env.block.angle = float(pose[2])
        env.block.position = pose[:2].tolist()
        observation = env.get_obs()["environment_state"]
        np.testing.assert_allclose(pusht_environment_state(pose), observation, atol=1e-9)
    env.close()


def test_real_pusht_zarr_first_episodes(tmp_path: Path) -> None:
    store = shared_path("data", "pusht", "pusht_cchi_v7_replay.zarr")
    raw = zarr.open_group(store, mode="r")
    ends = raw["meta/episode_ends"][:5]
    state, action = raw["data/state"][: ends[-1]], raw["data/action"][: ends[-1]]
    img, keypoint = raw["data/img"][: ends[-1]], raw["data/keypoint"][: ends[-1]]

    summary = convert_zarr(
        store,
        tmp_path / "pusht",
        mapping="pusht_keypoints",
        extra_mappings=["data/img=observation.image"],
        max_episodes=5,
        progress=False,
    )
    assert (summary.num_episodes, summary.num_frames, summary.episodes_in_store) == (5, ends[-1], 206)
    dataset = LeRobotDataset(summary.repo_id, root=tmp_path / "pusht")
    assert dataset.fps == 10 and len(dataset) == ends[-1]
    np.testing.assert_array_equal(dataset.meta.episodes["dataset_to_index"], ends)
    np.testing.assert_array_equal(_column(dataset, "observation.state"), state[:, :2])
    np.testing.assert_array_equal(_column(dataset, "action"), action)
    env_state = _column(dataset, "observation.environment_state")
    assert env_state.shape == (ends[-1], 16)
    np.testing.assert_allclose(env_state, pusht_environment_state(state[:, 2:5]), rtol=1e-6)
    # The T lies inside PushT's 512 x 512 workspace.
    assert env_state.min() > -10 and env_state.max() < 522
    frames = [0, 160, 161, int(ends[-1]) - 1]
    for i in frames:
        image = dataset[i]["observation.image"].numpy().transpose(1, 2, 0)
        np.testing.assert_array_equal(np.rint(image * 255), img[i])

    # The zarr's own keypoints are 9 points fixed in the block frame, placed by the same pose
    # transform (rotation about the body origin, then translation): taken back to the block frame
    # they stay put across frames and episodes.
    cos, sin = np.cos(state[:, 4])[:, None], np.sin(state[:, 4])[:, None]
    offset = keypoint - state[:, None, 2:4]
    local = np.stack([cos * offset[..., 0] + sin * offset[..., 1], -sin * offset[..., 0] + cos * offset[..., 1]], -1)
    assert local.std(axis=0).max() < 0.1


def test_nan_or_inf_in_a_written_array_is_refused_or_its_episode_dropped(tmp_path: Path) -> None:
    arrays = pusht_like_arrays(int(PUSHT_ENDS[-1]))
    arrays["action"][8, 1] = np.nan  # episode 1 (rows 5-11), its frame 3
    arrays["state"][15, 0] = np.inf  # episode 2 (rows 12-19), its frame 3
    path = write_replay_buffer(tmp_path / "nan.zarr", arrays, PUSHT_ENDS)
    expected = r"data/action -> 'action' holds nan at frame 3 of episode 1 \(store row 8\)"
    with pytest.raises(ZarrFormatError, match=expected):
        convert_zarr(path, tmp_path / "out", mapping="pusht", progress=False)
    assert not (tmp_path / "out").exists()
    summary = convert_zarr(path, tmp_path / "out", mapping="pusht", repo_id=REPO_ID, progress=False,
                           drop_nonfinite_episodes=True)  # fmt: skip
    assert summary.num_episodes == 1 and summary.num_frames == 5
    assert [index for index, _ in summary.dropped_episodes] == [1, 2]
    assert "left out episode 2: data/state -> 'observation.state' holds inf at frame 3" in summary.describe()
    dataset = LeRobotDataset(REPO_ID, root=tmp_path / "out")
    assert dataset.num_episodes == 1
    for key in ("action", "observation.state"):
        assert np.isfinite(_column(dataset, key)).all()
        assert all(np.isfinite(np.asarray(v)).all() for v in dataset.meta.stats[key].values())
