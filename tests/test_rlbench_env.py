"""The `rlbench` env type against the fake backend (RLBench needs CoppeliaSim, absent here), a real
`lerobot-eval` rollout through it, and the train configs in `configs/rlbench/`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from lerobot.configs.train import TrainPipelineConfig
from lerobot.envs.factory import make_env_config
from lerobot.envs.utils import env_to_policy_features, preprocess_observation
from lerobot.policies.factory import make_pre_post_processors
from lerobot.utils.feature_utils import dataset_to_policy_features

from lerobot_flowstep.datasets.calibration import calibration_info
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.rlbench.conventions import (
    DEFAULT_BOUNDS_HIGH,
    DEFAULT_BOUNDS_LOW,
    HOME_POSE,
    decode_depth,
    opencv_camera,
)
from lerobot_flowstep.rlbench.converter import rlbench_dataset_features
from lerobot_flowstep.rlbench.env import RLBENCH_GYM_ID, RLBenchEnv, RLBenchEnvConfig, RLBenchUnavailableError
from lerobot_flowstep.rlbench.fake_backend import FakeRLBenchBackend
from lerobot_flowstep.tools.lerobot_commands import offline_env

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "rlbench"
TASKS = [
    "close_door",
    "open_box",
    "open_fridge",
    "open_oven",
    "take_frame_off_hanger",
    "unplug_charger",
    "take_shoes_out_of_box",
    "put_books_on_bookshelf",
]
CAMERAS = ["front", "wrist"]


def fake_env(**kwargs) -> RLBenchEnv:
    return RLBenchEnv(**{"cameras": CAMERAS, "image_size": 24, "backend": "fake", **kwargs})


def test_env_type_is_registered_and_matches_the_converted_dataset() -> None:
    cfg = make_env_config("rlbench", backend="fake", cameras=CAMERAS, image_size=24, pointcloud_cameras=["front"])
    assert isinstance(cfg, RLBenchEnvConfig) and cfg.type == "rlbench" and cfg.gym_id == RLBENCH_GYM_ID
    env_features = {k: (v.type, v.shape) for k, v in env_to_policy_features(cfg).items()}
    # The converter writes depth maps, the fixed front camera's calibration once in their info and the wrist's
    # parameters per frame; a policy made from that dataset takes metric depth, which the env gives directly.
    front_k = [[20.0, 0.0, 12.0], [0.0, 20.0, 12.0], [0.0, 0.0, 1.0]]
    calibrations = {"front": calibration_info("front", front_k, np.eye(4))}
    spec = rlbench_dataset_features(
        CAMERAS, {c: (24, 24) for c in CAMERAS}, "ee_pose", _pointcloud_options(["front"]), calibrations
    )
    features = dataset_to_policy_features(spec)
    config = FlowstepTeacherConfig(
        input_features={k: v for k, v in features.items() if k != "action"},
        output_features={"action": features["action"]},
    )
    config.set_dataset_feature_metadata(spec)
    policy_inputs = {k: (v.type, v.shape) for k, v in config.input_features.items()}
    assert policy_inputs.items() <= env_features.items(), set(policy_inputs.items()) - set(env_features.items())
    # The env gives the fixed camera's parameters per frame too; the policy reads them from its config.
    assert set(env_features) - set(policy_inputs) - {"action"} == {
        "observation.camera.front.intrinsics",
        "observation.camera.front.extrinsics",
    }
    assert config.pointcloud.fixed_cameras["front"]["intrinsics"] == front_k
    with pytest.raises(ValueError, match="backend"):
        RLBenchEnvConfig(backend="mujoco")
    with pytest.raises(ValueError, match="side"):
        RLBenchEnvConfig(cameras=["front", "side"])


def _pointcloud_options(cameras):
    from lerobot_flowstep.rlbench.conventions import rlbench_pointcloud_config

    return rlbench_pointcloud_config(cameras=cameras)


@pytest.mark.skipif(importlib.util.find_spec("rlbench") is not None, reason="RLBench is installed here")
def test_missing_rlbench_fails_with_install_instructions() -> None:
    with pytest.raises(RLBenchUnavailableError, match="CoppeliaSim") as err:
        RLBenchEnv(task="open_box", backend="rlbench")
    assert "pip install" in str(err.value) and "--env.backend=fake" in str(err.value)
    assert "rlbench" not in sys.modules


def test_observations_follow_the_converter_conventions() -> None:
    env = fake_env(pointcloud_cameras=["front", "wrist"], pointcloud_num_points=32)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and info["is_success"] is False
    assert env.task_description == "reach the red target"
    backend = env.backend
    raw = backend.scene.observation(backend.pose, 1.0, backend.pose, backend.goal)
    for cam in CAMERAS:
        np.testing.assert_array_equal(obs["pixels"][cam], getattr(raw, f"{cam}_rgb"))
        np.testing.assert_array_equal(obs[f"depth.{cam}"][0], getattr(raw, f"{cam}_depth"))
        k, t = opencv_camera(raw.misc[f"{cam}_camera_intrinsics"], raw.misc[f"{cam}_camera_extrinsics"])
        np.testing.assert_allclose(obs[f"camera.{cam}.intrinsics"], k, atol=1e-5)
        np.testing.assert_allclose(obs[f"camera.{cam}.extrinsics"], t, atol=1e-6)
        assert obs[f"camera.{cam}.intrinsics"][0, 0] > 0
    np.testing.assert_allclose(obs["agent_pos"][8:11], HOME_POSE[:3], atol=1e-6)
    assert obs["pointcloud"].shape == (32, 3)
    # LeRobot's own conversion gives the policy keys the dataset has.
    batch = preprocess_observation({k: (v if k == "pixels" else v[None]) for k, v in obs.items()} | {
        "pixels": {c: obs["pixels"][c][None] for c in CAMERAS}
    })  # fmt: skip
    assert set(batch) >= {
        "observation.images.front", "observation.depth.wrist", "observation.camera.front.intrinsics",
        "observation.state", "observation.pointcloud",
    }  # fmt: skip
    assert batch["observation.depth.front"].shape == (1, 1, 24, 24)


def test_actions_are_clipped_normalised_and_thresholded() -> None:
    env = fake_env()
    env.reset(seed=0)
    command = env.command(np.array([5.0, -5.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.7]))
    np.testing.assert_allclose(command[:3], [DEFAULT_BOUNDS_HIGH[0], DEFAULT_BOUNDS_LOW[1], 1.0])
    np.testing.assert_allclose(command[3:7], [0.0, 1.0, 0.0, 0.0])
    assert command[7] == 1.0
    keep = env.command(np.array([0.1, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.2]))
    np.testing.assert_allclose(keep[3:7], HOME_POSE[3:])  # no usable quaternion: keep the orientation
    assert keep[7] == 0.0
    with pytest.raises(ValueError, match="8 finite numbers"):
        env.command(np.zeros(7))
    assert env.action_space.shape == (8,)
    assert env.action_space.contains(command.astype(np.float32))


def test_success_step_limit_and_invalid_actions() -> None:
    env = gym.make(RLBENCH_GYM_ID, backend="fake", cameras=CAMERAS, image_size=16, max_episode_steps=3)
    _, _ = env.reset(seed=1)
    goal = env.unwrapped.backend.goal
    _, reward, terminated, truncated, info = env.step(np.array([*goal, 0.0, 1.0, 0.0, 0.0, 1.0]))
    assert (reward, terminated, truncated, info["is_success"]) == (1.0, True, False, True)

    env.reset(seed=2)
    still = np.array([*HOME_POSE, 1.0])
    outcomes = [env.step(still)[2:4] for _ in range(3)]
    assert outcomes == [(False, False), (False, False), (False, True)]  # TimeLimit truncates at 3

    # An action the simulator cannot execute ends the episode as a failure, as RLBench's evaluations do.
    backend = FakeRLBenchBackend("reach", CAMERAS, 16, reach_high=(0.8, 0.6, 1.0))
    env = fake_env(image_size=16, backend=backend)
    obs, _ = env.reset(seed=0)
    after, reward, terminated, truncated, info = env.step(np.array([0.2, 0.0, 1.4, 0.0, 1.0, 0.0, 0.0, 1.0]))
    assert (reward, terminated, truncated, info["is_success"], info["invalid_action"]) == (
        0.0,
        True,
        False,
        False,
        True,
    )
    assert after is obs
    with pytest.raises(RuntimeError, match="before reset"):
        fake_env().step(still)


def test_fake_depth_survives_rlbench_png_encoding() -> None:
    """The fake scene's depth goes through RLBench's PNG packing losslessly enough for the fixtures."""
    from rlbench_fixtures import encode_depth

    env = fake_env(image_size=16)
    obs, _ = env.reset(seed=0)
    depth = obs["depth.front"][0]
    decoded = decode_depth(encode_depth(depth, 0.01, 4.5), 0.01, 4.5)
    np.testing.assert_allclose(decoded, depth, atol=1e-6)


def _tiny_checkpoint(directory: Path, cfg: RLBenchEnvConfig) -> Path:
    """A randomly initialised teacher for the env's features, saved as lerobot-train saves one."""
    features = env_to_policy_features(cfg)
    policy_cfg = FlowstepTeacherConfig(
        device="cpu",
        input_features={k: v for k, v in features.items() if k != "action"},
        output_features={"action": features["action"]},
        n_obs_steps=2,
        horizon=8,
        n_action_steps=4,
        num_inference_steps=2,
    )
    policy_cfg.encoder.vision_backbone = "conv"
    policy_cfg.network.hidden_dim = 32
    policy_cfg.network.num_blocks = 1
    policy_cfg.pointcloud.cameras = list(CAMERAS)
    policy_cfg.pointcloud.num_points = 32
    policy_cfg.pointcloud.bounds_low = list(DEFAULT_BOUNDS_LOW)
    policy_cfg.pointcloud.bounds_high = list(DEFAULT_BOUNDS_HIGH)
    stats = {
        "observation.state": {"min": torch.full((15,), -1.0), "max": torch.full((15,), 2.0)},
        "action": {
            "min": torch.tensor([*DEFAULT_BOUNDS_LOW, -1.0, -1.0, -1.0, -1.0, 0.0]),
            "max": torch.tensor([*DEFAULT_BOUNDS_HIGH, 1.0, 1.0, 1.0, 1.0, 1.0]),
        },
    }
    for cam in CAMERAS:
        stats[f"observation.images.{cam}"] = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)}
    policy = FlowstepTeacherPolicy(policy_cfg)
    pre, post = make_pre_post_processors(policy_cfg, dataset_stats=stats)
    policy.save_pretrained(directory)
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return directory


def test_lerobot_eval_rollout_with_the_fake_backend(tmp_path: Path) -> None:
    cfg = RLBenchEnvConfig(backend="fake", cameras=CAMERAS, image_size=24, episode_length=5)
    checkpoint = _tiny_checkpoint(tmp_path / "policy", cfg)
    output_dir = tmp_path / "eval"
    cmd = [
        sys.executable, "-m", "lerobot.scripts.lerobot_eval",
        f"--policy.path={checkpoint}", "--policy.device=cpu",
        "--env.type=rlbench", "--env.task=reach_target", "--env.backend=fake", "--env.cameras=[front,wrist]",
        "--env.image_size=24", "--env.episode_length=5",
        "--eval.n_episodes=2", "--eval.batch_size=2", "--eval.use_async_envs=false", "--seed=0",
        f"--output_dir={output_dir}",
    ]  # fmt: skip
    result = subprocess.run(cmd, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    info = json.loads((output_dir / "eval_info.json").read_text())
    metrics = info["per_task"][0]["metrics"]
    assert info["per_task"][0]["task_group"] == "rlbench" and info["overall"]["n_episodes"] == 2
    assert len(metrics["successes"]) == 2 and all(0.0 <= r <= 1.0 for r in metrics["sum_rewards"])
    assert info["overall"]["pc_success"] == pytest.approx(100 * np.mean(metrics["successes"]))
    assert "at most 5 steps" in result.stdout + result.stderr  # the env's step limit reached the rollout


def test_lerobot_rollout_in_process_runs_to_the_step_limit(tmp_path: Path) -> None:
    """The same loop in process, where the number of steps and the success flags can be inspected."""
    from lerobot.envs.factory import make_env, make_env_pre_post_processors
    from lerobot.scripts.lerobot_eval import rollout

    cfg = RLBenchEnvConfig(backend="fake", cameras=CAMERAS, image_size=24, episode_length=6)
    checkpoint = _tiny_checkpoint(tmp_path / "policy", cfg)
    policy = FlowstepTeacherPolicy.from_pretrained(checkpoint).eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(checkpoint))
    env_pre, env_post = make_env_pre_post_processors(cfg, policy.config)
    envs = make_env(cfg, n_envs=2)
    vec = envs["rlbench"][0]
    try:
        data = rollout(vec, policy, env_pre, env_post, pre, post, seeds=[0, 1])
    finally:
        vec.close()
    # The fake arm reaches the whole action box, so both episodes run to the step limit.
    assert data["action"].shape == (2, 6, 8) and not data["done"][:, :-1].any()
    assert data["success"].dtype == torch.bool and data["success"].shape == (2, 6)


@pytest.mark.parametrize("task", TASKS)
def test_train_configs(task: str) -> None:
    teacher_path, student_path = CONFIGS / f"{task}_teacher.json", CONFIGS / f"{task}_student.json"
    cfg = TrainPipelineConfig.from_pretrained(teacher_path, cli_args=[])
    assert isinstance(cfg.policy, FlowstepTeacherConfig)
    assert isinstance(cfg.env, RLBenchEnvConfig) and cfg.env.task == task and cfg.env.backend == "rlbench"
    assert cfg.dataset.repo_id == f"local/rlbench_{task}"
    assert set(cfg.policy.pointcloud.cameras) <= set(cfg.env.cameras)
    assert cfg.policy.pointcloud.bounds_low == cfg.env.bounds_low and cfg.policy.pointcloud.num_points >= 512
    assert cfg.env.episode_length > cfg.policy.horizon and cfg.env_eval_freq == 0
    cfg.validate()  # what lerobot-train does before training (output_dir is not created here)

    # The student config is the teacher's with the student type and the teacher's future checkpoint.
    teacher, student = json.loads(teacher_path.read_text()), json.loads(student_path.read_text())
    assert student["policy"]["type"] == "imle_student"
    assert student["policy"]["teacher_path"] == f"{teacher['output_dir']}/checkpoints/last/pretrained_model"
    assert student["dataset"] == teacher["dataset"] and student["env"] == teacher["env"]
    for key in ("n_obs_steps", "horizon", "n_action_steps", "encoder", "pointcloud"):
        assert student["policy"][key] == teacher["policy"][key]


def test_student_config_parses_against_a_teacher_checkpoint(tmp_path: Path) -> None:
    """The student reads its teacher's checkpoint when its config is parsed, so a stand-in teacher is made."""
    from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig

    env_cfg = RLBenchEnvConfig(backend="fake", cameras=CAMERAS, image_size=24)
    teacher = _tiny_checkpoint(tmp_path / "teacher", env_cfg)
    cfg = TrainPipelineConfig.from_pretrained(
        CONFIGS / "open_box_student.json", cli_args=[f"--policy.teacher_path={teacher}"]
    )
    assert isinstance(cfg.policy, ImleStudentConfig) and cfg.policy.teacher_path == str(teacher)
    # Settings the student inherits come from the checkpoint, not from the JSON.
    assert cfg.policy.pointcloud.cameras == CAMERAS and cfg.policy.horizon == 8
    assert cfg.env.task == "open_box"
