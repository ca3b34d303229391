"""Guards against damaged weights and bad observations: no NaN or inf action leaves a policy, and the error
names what made it; a damaged checkpoint and a wrongly sized observation are refused by name."""

import json
import struct

import pytest
import torch
from lerobot.policies.factory import make_pre_post_processors
from test_teacher import SIZE, _config, _raw_batch, _stats

from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy

FILM = "velocity.blocks.0.film.weight"


def _policy():
    torch.manual_seed(0)
    config = _config()
    policy = FlowstepTeacherPolicy(config).eval()
    pre, post = make_pre_post_processors(config, dataset_stats=_stats())
    return policy, pre, post


def _frame(**overrides):
    """One raw observation (batch of 1), as an env hands it to the preprocessor."""
    frame = {k: v[:1, 0] for k, v in _raw_batch(b=1).items() if k.startswith("observation.")}
    return frame | overrides


def test_bit_flipped_weights_are_refused_at_load_naming_the_tensor(tmp_path):
    policy, _, _ = _policy()
    policy.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    header_size = struct.unpack("<Q", data[:8])[0]
    start, _ = json.loads(data[8 : 8 + header_size])[FILM]["data_offsets"]
    offset = 8 + header_size + start
    data[offset : offset + 64] = b"\xff" * 64  # 16 float32 NaNs
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{path}.*NaN or inf in 1 tensors: '{FILM}' \(16 of \d+ values\)"):
        FlowstepTeacherPolicy.from_pretrained(tmp_path)


@pytest.mark.parametrize("call", ["select_action", "predict_action_chunk"])
def test_no_nan_action_leaves_a_policy_whose_weights_went_bad(call):
    policy, pre, _ = _policy()
    with torch.no_grad():
        policy.state_dict()[FILM][0, 0] = float("nan")
    with pytest.raises(
        FloatingPointError, match=rf"NaN or inf actions.*weights hold NaN or inf in 1 tensors: '{FILM}'"
    ):
        getattr(policy, call)(pre(_frame()))


def test_a_nan_observation_is_named():
    policy, pre, _ = _policy()
    state = torch.tensor([[0.1, float("nan")]])
    with pytest.raises(FloatingPointError, match=r"observation keys holding NaN or inf: \['observation.state'\]"):
        policy.select_action(pre(_frame(**{"observation.state": state})))


def test_an_extreme_depth_without_bounds_names_the_point_cloud():
    policy, pre, post = _policy()
    depth = _frame()["observation.depth.top"].clone()
    depth[0, 0, 3, 4] = 1e30
    with pytest.raises(
        FloatingPointError, match=r"'observation.pointcloud' holds a coordinate of 1e\+30 m .*bounds_low"
    ):
        post(policy.select_action(pre(_frame(**{"observation.depth.top": depth}))))


def test_actions_are_finite_and_queued_on_the_host():
    policy, pre, post = _policy()
    for _ in range(6):
        action = post(policy.select_action(pre(_frame())))
        assert action.shape == (1, 2) and action.device.type == "cpu" and bool(torch.isfinite(action).all())


@pytest.mark.parametrize("call", ["select_action", "predict_action_chunk"])
def test_an_image_of_another_size_is_named(call):
    policy, _, _ = _policy()
    frame = {k: v[:1, 0] for k, v in _raw_batch(b=1).items() if k.startswith("observation.")}
    frame["observation.pointcloud"] = torch.zeros(1, 32, 3)
    frame["observation.images.top"] = torch.rand(1, 3, SIZE // 2, SIZE // 2)
    expected = rf"'observation.images.top' has shape \(1, 3, {SIZE // 2}, {SIZE // 2}\), but this policy was trained on"
    with pytest.raises(ValueError, match=expected):
        getattr(policy, call)(frame)


def _action_stats(**action):
    stats = _stats()
    stats["action"] = {
        "min": torch.tensor([-1.0, -1.0]),
        "max": torch.tensor([1.0, 1.0]),
        "mean": torch.tensor([0.0, 0.0]),
        "std": torch.tensor([0.5, 0.5]),
    } | {k: torch.tensor(v) for k, v in action.items()}
    return stats


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"max": [-1.0, 1.0]}, r"'action' max == min although std > 0 \(the data vary\) at dims \[0\]"),
        ({"min": [-1.0, 2.0]}, r"'action' max < min \(inverted\) at dims \[1\]"),
        ({"std": [0.5, float("nan")]}, r"'action' std holds NaN or inf"),
    ],
)
def test_flat_inverted_or_nan_normalization_stats_are_refused(action, message):
    with pytest.raises(ValueError, match=message):
        make_pre_post_processors(_config(), dataset_stats=_action_stats(**action))


def test_a_constant_dimension_is_not_flat_stats():
    """max == min with no spread is a dimension that never moves (a fixed obstacle): it normalizes to -1."""
    stats = _action_stats(min=[-1.0, 0.3], max=[1.0, 0.3], mean=[0.0, 0.3], std=[0.5, 0.0])
    make_pre_post_processors(_config(), dataset_stats=stats)


def test_inverted_or_nan_pointcloud_bounds_are_refused():
    from lerobot_flowstep.processor.pointcloud import PointCloudConfig

    with pytest.raises(ValueError, match=r"bounds_low \[0.0, 1.0, 0.0\] must be <= bounds_high \[1.0, 0.0, 1.0\]"):
        PointCloudConfig(cameras=["top"], bounds_low=[0.0, 1.0, 0.0], bounds_high=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="neither NaN"):
        PointCloudConfig(cameras=["top"], bounds_low=[0.0, float("nan"), 0.0], bounds_high=[1.0, 1.0, 1.0])
    PointCloudConfig(cameras=["top"], bounds_low=[0.0, 0.0, 0.0], bounds_high=[1.0, 1.0, 0.0])  # a flat box is a box


@pytest.mark.slow
def test_lerobot_train_shows_why_a_student_cannot_be_a_teacher(tmp_path):
    import subprocess
    import sys

    from lerobot_flowstep.policies.flowstep_regression.configuration_flowstep_regression import (
        FlowstepRegressionConfig,
    )
    from lerobot_flowstep.tools.lerobot_commands import offline_env

    FlowstepRegressionConfig().save_pretrained(tmp_path / "student")
    args = [f"--policy.teacher_path={tmp_path / 'student'}", "--dataset.repo_id=local/x", f"--dataset.root={tmp_path}"]
    result = subprocess.run(
        [sys.executable, "-m", "lerobot.scripts.lerobot_train", "--policy.type=imle_student", *args],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=300,
    )
    assert result.returncode != 0
    assert f"teacher_path '{tmp_path / 'student'}' holds a 'flowstep_regression' policy, not a flowstep_teacher" in (
        result.stderr
    )


def test_a_refused_nested_setting_is_explained_on_the_command_line():
    """draccus (lerobot-train's parser) would show only "Couldn't instantiate class PointCloudConfig"."""
    import draccus
    from lerobot.configs.train import TrainPipelineConfig

    args = ["--policy.type=flowstep_teacher", "--policy.pointcloud.cameras=[top]", "--dataset.repo_id=local/x"]
    bounds = ["--policy.pointcloud.bounds_low=[1,0,0]", "--policy.pointcloud.bounds_high=[0,1,1]"]
    with pytest.raises(Exception, match=r"bounds_low \[1.0, 0.0, 0.0\] must be <= bounds_high"):
        draccus.parse(config_class=TrainPipelineConfig, args=[*args, *bounds])
    with pytest.raises(Exception, match="inference_noise_scale must be a finite number"):
        draccus.parse(config_class=TrainPipelineConfig, args=[*args, "--policy.inference_noise_scale=-1"])


def test_a_student_given_other_input_features_than_its_teacher_says_so(tmp_path):
    """LeRobot's test_multikey_construction builds a policy from given features and expects to see them."""
    from conftest import ACTION_FEATURES
    from lerobot.configs import FeatureType, PolicyFeature

    from lerobot_flowstep.policies.flowstep_teacher import FlowstepTeacherConfig
    from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig

    def features(n):
        return {"observation.state": PolicyFeature(FeatureType.STATE, (n,))}

    teacher = FlowstepTeacherConfig(input_features=features(10), output_features=dict(ACTION_FEATURES))
    teacher.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"given to this student \{'observation.state': \('STATE', \(6,\)\)\} differ"):
        ImleStudentConfig(teacher_path=str(tmp_path), input_features=features(6), output_features=dict(ACTION_FEATURES))
    same = ImleStudentConfig(teacher_path=str(tmp_path), input_features=features(10))
    assert same.input_features["observation.state"].shape == (10,)
    inherited = ImleStudentConfig(teacher_path=str(tmp_path))
    assert inherited.input_features["observation.state"].shape == (10,)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fps", 20, r"says fps=20, but episode 0 has a frame every 0.1 s \(10 fps\)"),
        ("total_frames", 50, r"says total_frames=50, but its 2 episodes hold \d+ frames"),
    ],
)
def test_an_edited_info_json_is_refused_when_the_policy_is_made(tmp_path, field, value, message):
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy

    from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
    from lerobot_flowstep.policies.flowstep_teacher import FlowstepTeacherConfig

    root = generate_obstacle_dataset(tmp_path / "data", repo_id="local/a", num_episodes=2)
    make_policy(FlowstepTeacherConfig(device="cpu"), ds_meta=LeRobotDatasetMetadata("local/a", root=root))
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps(info | {field: value}))
    with pytest.raises(ValueError, match=message):
        make_policy(FlowstepTeacherConfig(device="cpu"), ds_meta=LeRobotDatasetMetadata("local/a", root=root))
