"""`lerobot-train` and `lerobot-eval` as real subprocesses, offline, finding the plugin by themselves."""

import json

import pytest

from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
from lerobot_flowstep.lerobot_commands import eval_args, last_checkpoint, lerobot_eval, lerobot_train, train_args

REPO_ID = "local/flowstep_obstacle_test"


def _train_and_eval(tmp_path, data_root, extra_train, extra_eval, episodes=2):
    train_dir = tmp_path / "train"
    lerobot_train(
        [*train_args("flowstep_teacher", REPO_ID, data_root, train_dir, steps=4, batch_size=8), *extra_train],
        tmp_path / "train.log",
        total_steps=4,
    )
    checkpoint = last_checkpoint(train_dir)
    assert {"config.json", "model.safetensors", "policy_preprocessor.json"} <= {p.name for p in checkpoint.iterdir()}
    info = lerobot_eval(
        [*eval_args(checkpoint, "flowstep_obstacle", episodes, 2, seed=123), *extra_eval],
        tmp_path / "eval",
        tmp_path / "eval.log",
    )
    assert info["overall"]["n_episodes"] == episodes
    return checkpoint, info


@pytest.mark.slow
def test_state_only_teacher_trains_and_evaluates_through_lerobot(tmp_path):
    data = generate_obstacle_dataset(tmp_path / "data", repo_id=REPO_ID, num_episodes=6, seed=0)
    checkpoint, _ = _train_and_eval(tmp_path, data, ["--policy.horizon=8", "--policy.n_action_steps=4"], [])
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["type"] == "flowstep_teacher"
    assert set(config["input_features"]) == {"observation.state", "observation.environment_state"}


@pytest.mark.slow
def test_camera_teacher_with_point_clouds_trains_and_evaluates_through_lerobot(tmp_path):
    data = generate_obstacle_dataset(
        tmp_path / "data", repo_id=REPO_ID, num_episodes=3, camera=True, image_size=32, seed=0
    )
    checkpoint, _ = _train_and_eval(
        tmp_path,
        data,
        [
            "--policy.horizon=8",
            "--policy.n_action_steps=4",
            "--policy.encoder.vision_backbone=conv",
            "--policy.pointcloud.cameras=[top]",
            "--policy.pointcloud.num_points=64",
            "--policy.pointcloud.bounds_low=[-1.2,-1.2,-0.05]",
            "--policy.pointcloud.bounds_high=[1.2,1.2,0.5]",
        ],
        ["--env.camera=true", "--env.image_size=32"],
    )
    pre = json.loads((checkpoint / "policy_preprocessor.json").read_text())
    step = next(s for s in pre["steps"] if s.get("registry_name") == "flowstep_pointcloud")
    assert step["config"]["cameras"] == ["top"]
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["input_features"]["observation.pointcloud"]["shape"] == [64, 3]
    assert "observation.images.top" in config["input_features"]
