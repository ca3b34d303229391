"""A robot that misbehaves under LeRobot's robot runtime: it disconnects mid-episode, a camera frame is missing,
or it gives other features than the policy was trained on. Each must end in an error that names what is wrong,
leave what `lerobot-record` saved loadable (no half-written episode), and never let the robot go on executing
the actions a policy queued from an earlier observation.

The faults are injected into the simulated robot (`--robot.faults.*`); the slow tests run LeRobot's own
commands on it. The policy checkpoints are written in-process, in the layout `lerobot-train` writes (untrained
weights: what is tested is where the run stops, not how well it moves)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.utils import prepare_observation_for_inference
from lerobot.robots import RobotConfig, make_robot_from_config
from lerobot.teleoperators import TeleoperatorConfig, make_teleoperator_from_config
from lerobot.utils.errors import DeviceNotConnectedError
from lerobot.utils.feature_utils import build_dataset_frame, hw_to_dataset_features

from lerobot_flowstep.constants import OBS_POINTCLOUD
from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.policies.common.processor_base import make_flowstep_pre_post_processors
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.processor.pointcloud import PointCloudConfig
from lerobot_flowstep.robots.obstacle_sim.config_obstacle_sim import SimFaultsConfig
from lerobot_flowstep.tools.lerobot_commands import (
    lerobot_record,
    lerobot_rollout,
    obstacle_sim_args,
    record_dataset_args,
)

FPS = 16
BOUNDS = {"bounds_low": [-1.2, -1.2, -0.05], "bounds_high": [1.2, 1.2, 0.5]}


def make_robot(tmp_path, **overrides):
    config = RobotConfig.get_choice_class("flowstep_obstacle_sim")(
        calibration_dir=tmp_path / "calibration", fps=FPS, episode_time_s=1.0, reset_time_s=0.5, **overrides
    )
    return make_robot_from_config(config)


# --- the injected faults ------------------------------------------------------------------------------------------


def test_injected_faults_surface_as_lerobots_robot_errors_in_the_chosen_scene_only(tmp_path, clock):
    robot = make_robot(
        tmp_path,
        report_path=tmp_path / "report.json",
        faults=SimFaultsConfig(1, disconnect_at_step=4, drop_frame_at_step=2),
    )
    expert = make_teleoperator_from_config(TeleoperatorConfig.get_choice_class("flowstep_obstacle_expert")())
    expert.connect()
    robot.connect()

    def tick():
        robot.get_observation()
        robot.send_action(expert.get_action())
        clock.now += 1.0 / FPS

    for _ in range(FPS + FPS // 2):  # scene 0 and the reset after it: no fault
        tick()
    assert robot.scene_index == 1
    tick()  # step 1 of scene 1
    with pytest.raises(TimeoutError, match=r"waiting for a frame from camera 'top' at step 2 of scene 1"):
        robot.get_observation()
    clock.now += 1.0 / FPS
    tick()  # step 3: the camera gives frames again; this action came after the fault
    with pytest.raises(DeviceNotConnectedError, match=r"lost its connection at step 4 of scene 1"):
        robot.get_observation()
    with pytest.raises(DeviceNotConnectedError, match="lost its connection"):
        robot.send_action(expert.get_action())
    with pytest.raises(DeviceNotConnectedError):  # for good
        robot.get_observation()
    robot.disconnect()  # what LeRobot's commands call at the end still works, and writes the report
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["faults"] == {
        "scene": 1,
        "link_lost_at_step": 4,
        "frame_dropped_at_step": 2,
        "actions_after_fault": 2,
    }
    assert "faults" not in make_robot(tmp_path).report()


def test_a_fault_step_counts_from_one():
    with pytest.raises(ValueError, match="disconnect_at_step counts from 1"):
        SimFaultsConfig(disconnect_at_step=0)


# --- features other than the policy was trained on --------------------------------------------------------------


def teacher_on_the_robot(tmp_path) -> tuple[FlowstepTeacherPolicy, FlowstepTeacherConfig, dict]:
    """A point cloud + state teacher for the default simulated robot (64x64 depth of camera 'top', the goal as
    state), configured as lerobot-train configures it from that robot's recording, with its normalization stats."""
    calibration = make_robot(tmp_path).camera_calibration["top"]
    config = FlowstepTeacherConfig(
        device="cpu",
        horizon=8,
        n_action_steps=4,
        network=NetworkConfig(hidden_dim=32, num_blocks=1, time_embed_dim=16),
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (4,)),
            "observation.depth.top": PolicyFeature(FeatureType.STATE, (1, 64, 64)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        depth_maps={"observation.images.top_depth": [0.01, 10.0]},
        pointcloud=PointCloudConfig(
            cameras=["top"],
            num_points=64,
            fixed_cameras={
                "top": {"intrinsics": calibration["intrinsics"], "extrinsics": calibration["camera_to_world"]}
            },
            **BOUNDS,
        ),
    )
    policy = FlowstepTeacherPolicy(config)
    stats = {
        "observation.state": {"min": torch.full((4,), -1.0), "max": torch.full((4,), 1.0)},
        "action": {"min": torch.full((2,), -1.0), "max": torch.full((2,), 1.0)},
    }
    return policy, config, stats


def policy_input(robot, preprocessor) -> dict:
    """One observation of `robot` through LeRobot's rollout path (the features lerobot-rollout keeps,
    build_dataset_frame, prepare_observation_for_inference) and the policy's preprocessor."""
    kept = {k: v for k, v in robot.observation_features.items() if isinstance(v, tuple) or k.endswith(".pos")}
    frame = build_dataset_frame(hw_to_dataset_features(kept, "observation"), robot.get_observation(), "observation")
    return preprocessor(prepare_observation_for_inference(frame, torch.device("cpu"), "reach", robot.name))


@pytest.mark.parametrize(
    ("robot_overrides", "message"),
    [
        # The old code made a point cloud from the 48x48 map with the 64x64 calibration and acted on it.
        ({"image_size": 48}, r"other shape: 'observation.images.top_depth' is \(1, 48, 48\) per frame, trained on "),
        # The old code: "The size of tensor a (2) must match the size of tensor b (4)" in the normalizer.
        ({"observe_goal": False}, r"other shape: 'observation.state' is \(2,\) per frame, trained on \(4,\)"),
        ({"camera": "front"}, r"missing: 'observation.images.top_depth'.*holds: .*'observation.images.front_depth'"),
    ],
)
def test_a_robot_with_other_features_than_training_is_refused_naming_them(tmp_path, robot_overrides, message):
    policy, config, stats = teacher_on_the_robot(tmp_path)
    preprocessor, _ = make_flowstep_pre_post_processors(config, stats)
    with make_robot(tmp_path) as robot:  # the robot it was made for
        batch = policy_input(robot, preprocessor)
        assert batch[OBS_POINTCLOUD].shape == (1, 64, 3)
        assert policy.select_action(batch).shape == (1, 2)
    with make_robot(tmp_path, **robot_overrides) as other:
        pattern = rf"(?s)does not match the features this policy was trained on.*{message}"
        with pytest.raises(ValueError, match=pattern):
            policy_input(other, preprocessor)


def test_an_env_may_give_the_metric_depth_the_depth_map_becomes(tmp_path):
    """lerobot-eval on the embedded task's camera gives `observation.depth.top` in metres, not the depth map."""
    _, config, stats = teacher_on_the_robot(tmp_path)
    preprocessor, _ = make_flowstep_pre_post_processors(config, stats)
    state = torch.zeros(1, 4)
    batch = preprocessor({"observation.state": state, "observation.depth.top": torch.full((1, 1, 64, 64), 3.0)})
    assert batch[OBS_POINTCLOUD].shape == (1, 64, 3)
    missing = r"missing: 'observation.images.top_depth' \(or 'observation.depth.top'\) \(1, 64, 64\)"
    with pytest.raises(ValueError, match=missing):
        preprocessor({"observation.state": state})


# --- LeRobot's commands on a robot that misbehaves ------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder as lerobot-train writes it (config, weights, both processors)."""
    path = tmp_path_factory.mktemp("teacher") / "pretrained_model"
    policy, config, stats = teacher_on_the_robot(path.parent)
    preprocessor, postprocessor = make_flowstep_pre_post_processors(config, stats)
    policy.save_pretrained(path)
    preprocessor.save_pretrained(path)
    postprocessor.save_pretrained(path)
    return path


def record(tmp_path, faults: list[str]) -> None:
    lerobot_record(
        [
            *obstacle_sim_args(30, 1.0, 0.3, tmp_path / "calibration", tmp_path / "record.json"),
            *faults,
            "--teleop.type=flowstep_obstacle_expert",
            *record_dataset_args("local/faulty", tmp_path / "data", 30, 1.0, 0.3, 3, "reach"),
        ],
        tmp_path / "record.log",
        timeout_s=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("--robot.faults.disconnect_at_step=10", r"DeviceNotConnectedError: flowstep_obstacle_sim lost its connection"),
        ("--robot.faults.drop_frame_at_step=10", r"TimeoutError: .*waiting for a frame from camera 'top'"),
    ],
)
def test_lerobot_record_stops_on_a_fault_and_keeps_the_episodes_saved_before_it(tmp_path, fault, message):
    """The fault strikes in the second episode: lerobot-record fails naming it, and the dataset holds the first
    episode whole, loadable, with no trace of the second (LeRobot's own handling, relied on here)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    with pytest.raises(RuntimeError, match=message):
        record(tmp_path, ["--robot.faults.scene=1", fault])
    dataset = LeRobotDataset("local/faulty", root=tmp_path / "data")
    assert dataset.num_episodes == 1 and dataset.meta.total_episodes == 1
    assert len(dataset) == dataset.meta.total_frames > 10
    assert int(dataset[len(dataset) - 1]["episode_index"]) == 0
    assert dataset[len(dataset) - 1]["observation.images.top_depth"].shape == (1, 64, 64)  # its video decodes
    assert not list((tmp_path / "data").rglob("*.png")), "images of the interrupted episode were left behind"
    report = json.loads((tmp_path / "record.json").read_text())
    assert report["faults"]["actions_after_fault"] == 0, report


def rollout(tmp_path, checkpoint: Path, robot_args: list[str]) -> tuple[str, dict]:
    """lerobot-rollout of `checkpoint` on the simulated robot, which must fail: the error (with the log's tail)
    and the robot's report (written at disconnect, which LeRobot's teardown calls either way)."""
    report_path = tmp_path / "rollout.json"
    with pytest.raises(RuntimeError) as failure:
        lerobot_rollout(
            [
                "--strategy.type=base",
                f"--policy.path={checkpoint}",
                "--policy.device=cpu",
                *obstacle_sim_args(30, 2.0, 0.4, tmp_path / "calibration", report_path),
                *robot_args,
                "--fps=30",
                "--duration=4",
                "--return_to_initial_position=false",
                "--play_sounds=false",
                "--task=reach",
            ],
            tmp_path / "rollout.log",
            timeout_s=600,
        )
    return str(failure.value), json.loads(report_path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("--robot.faults.disconnect_at_step=4", r"DeviceNotConnectedError: flowstep_obstacle_sim lost its connection"),
        ("--robot.faults.drop_frame_at_step=4", r"TimeoutError: .*waiting for a frame from camera 'top'"),
    ],
)
def test_lerobot_rollout_stops_on_a_fault_with_actions_still_queued(tmp_path, teacher_checkpoint, fault, message):
    """Step 1 is the observation lerobot-rollout takes at connect, step 2 plans a chunk of 4 actions and sends
    the first: the fault at step 4 strikes with two actions still queued. None of them reaches the robot."""
    error, report = rollout(tmp_path, teacher_checkpoint, [fault])
    assert re.search(message, error), error
    assert report["actions"] == 2 and report["faults"]["actions_after_fault"] == 0, report


@pytest.mark.slow
def test_lerobot_rollout_refuses_a_robot_with_another_image_size_before_the_first_action(tmp_path, teacher_checkpoint):
    """The policy was trained on 64x64 depth; the robot gives 48x48. The old code ran on, unprojecting the map
    with the 64x64 calibration into a wrong point cloud."""
    error, report = rollout(tmp_path, teacher_checkpoint, ["--robot.image_size=48"])
    assert re.search(r"other shape: 'observation.images.top_depth' is \(1, 48, 48\) per frame", error), error
    assert report["actions"] == 0, report
