"""The simulated RGB-D robot `flowstep_obstacle_sim` and its scripted operator `flowstep_obstacle_expert`, made by
LeRobot's own factories, on a clock the test controls (the robot reads `time.perf_counter`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lerobot.robots import RobotConfig, make_robot_from_config
from lerobot.teleoperators import TeleoperatorConfig, make_teleoperator_from_config

from lerobot_flowstep.datasets.calibration import read_calibration_file
from lerobot_flowstep.envs.obstacle import ObstacleLayout, ObstacleReachEnv, ObstacleRenderer
from lerobot_flowstep.robots.obstacle_sim.obstacle_sim import AGENT_KEYS, FlowstepObstacleSim
from lerobot_flowstep.teleoperators.obstacle_expert import FlowstepObstacleExpert

FPS = 16  # a period exact in binary, so that the fake clock lands on the phase boundaries


def make_robot(tmp_path, **overrides) -> FlowstepObstacleSim:
    config = RobotConfig.get_choice_class("flowstep_obstacle_sim")(
        calibration_dir=tmp_path / "calibration", fps=FPS, episode_time_s=3.0, reset_time_s=0.5, **overrides
    )
    return make_robot_from_config(config)


def make_expert(**overrides) -> FlowstepObstacleExpert:
    return make_teleoperator_from_config(TeleoperatorConfig.get_choice_class("flowstep_obstacle_expert")(**overrides))


def tick(robot, teleop, clock, dt=1.0 / FPS):
    observation = robot.get_observation()
    sent = robot.send_action(teleop.get_action())
    clock.now += dt
    return observation, sent


def test_lerobot_makes_the_robot_whose_camera_gives_rgb_and_millimetre_depth_as_a_realsense(tmp_path, clock):
    robot = make_robot(tmp_path)
    assert isinstance(robot, FlowstepObstacleSim)
    assert robot.observation_features == {
        "agent_x.pos": float,
        "agent_y.pos": float,
        "goal_x.pos": float,
        "goal_y.pos": float,
        "top": (64, 64, 3),
        "top_depth": (64, 64, 1),
    }
    assert robot.action_features == {"agent_x.pos": float, "agent_y.pos": float}
    with pytest.raises(ConnectionError, match="not connected"):
        robot.get_observation()
    robot.connect()
    observation = robot.get_observation()
    assert observation["top"].dtype == np.uint8 and observation["top"].shape == (64, 64, 3)
    depth = observation["top_depth"]
    assert depth.dtype == np.uint16 and depth.shape == (64, 64, 1)
    # The env's metric depth of the same scene, to the millimetre.
    env = ObstacleReachEnv(2, camera=True, image_size=64, max_episode_steps=None)
    reference, _ = env.reset(seed=0)
    np.testing.assert_allclose(depth[..., 0] / 1000.0, reference["depth.top"][0], atol=5e-4)
    np.testing.assert_array_equal(observation["top"], reference["pixels"]["top"])
    assert [observation["goal_x.pos"], observation["goal_y.pos"]] == pytest.approx(reference["environment_state"][:2])
    robot.disconnect()


def test_connecting_writes_the_camera_calibration_as_a_file_lerobot_flowstep_calibrate_reads(tmp_path, clock):
    robot = make_robot(tmp_path, id="arm")
    assert not robot.is_calibrated
    robot.connect()
    path = tmp_path / "calibration" / "arm_top_camera.json"
    assert robot.is_calibrated and robot.camera_calibration_path() == path
    calibration = read_calibration_file(path)
    renderer = ObstacleRenderer(ObstacleLayout.preset(2), 64)
    np.testing.assert_allclose(calibration["intrinsics"], renderer.intrinsics, rtol=1e-6)
    np.testing.assert_allclose(calibration["extrinsics"], renderer.extrinsics, rtol=1e-6, atol=1e-7)
    robot.disconnect()


def test_lerobot_calibrate_writes_the_camera_calibration(tmp_path, monkeypatch):
    from lerobot.scripts import lerobot_calibrate

    argv = ["lerobot-calibrate", "--robot.type=flowstep_obstacle_sim", "--robot.id=cam"]
    monkeypatch.setattr("sys.argv", [*argv, f"--robot.calibration_dir={tmp_path}"])
    lerobot_calibrate.calibrate()
    calibration = read_calibration_file(tmp_path / "cam_top_camera.json")
    np.testing.assert_allclose(calibration["intrinsics"], ObstacleRenderer(ObstacleLayout.preset(2), 64).intrinsics)


def test_the_expert_records_whole_scenes_on_lerobot_records_schedule(tmp_path, clock):
    """Live for episode_time_s, then a new scene held for reset_time_s (actions ignored), then live again from
    the first tick after it: every live phase starts at a scene's start."""
    robot = make_robot(tmp_path, report_path=tmp_path / "report.json")
    expert = make_expert()
    expert.connect()  # before the robot, as lerobot-record does
    robot.connect()
    live_starts, held = [], []
    for _ in range(2):
        observation, _ = tick(robot, expert, clock)
        live_starts.append([observation["agent_x.pos"], observation["agent_y.pos"]])
        for _ in range(3 * FPS - 1):
            tick(robot, expert, clock)
        # The reset phase: a new scene, held at its start whatever the operator sends.
        first, _ = tick(robot, expert, clock)
        for _ in range(int(0.5 * FPS) - 1):
            observation, _ = tick(robot, expert, clock)
            held.append(observation["agent_y.pos"] == first["agent_y.pos"])
    assert all(held)
    assert all(y < -0.75 for _, y in live_starts)  # the start region of the layout
    observation, _ = tick(robot, expert, clock)  # the third scene is live: the agent moves
    assert robot.get_observation()["agent_y.pos"] > observation["agent_y.pos"]
    robot.disconnect()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scenes"] == 2 and report["successes"] == 2 and report["collisions"] == 0
    assert report["overruns"] == 0 and report["achieved_hz"] == pytest.approx(FPS)
    assert len(report["modes"]) == 2 and all(m in (0, 1) for m in report["modes"])


def test_a_phase_ends_at_an_observation_never_between_an_observation_and_its_action(tmp_path, clock):
    """`lerobot-record` ends an episode by the time a tick starts: a live phase that runs out while the operator
    or the policy decides must still take that tick's action, or the robot's reset would start a tick before
    LeRobot's and end while LeRobot still resets, starting the next scene unrecorded."""
    robot = make_robot(tmp_path)
    expert = make_expert()
    expert.connect()
    robot.connect()
    for _ in range(3 * FPS - 1):
        tick(robot, expert, clock)
    last = robot.get_observation()  # the live phase's last tick starts 1/16 s before its end
    clock.now += 2.0 / FPS  # and its action comes late, after the end
    robot.send_action({"agent_x.pos": last["agent_x.pos"], "agent_y.pos": last["agent_y.pos"] + 0.05})
    assert robot.scene_index == 0
    first = robot.get_observation()  # the next tick: LeRobot's reset phase, the robot's too
    assert robot.scene_index == 1 and robot.report()["scenes"] == 1
    clock.now += 0.5 - 1e-3
    robot.send_action({"agent_x.pos": 0.0, "agent_y.pos": 0.0})
    held = robot.get_observation()  # still within reset_time_s of the reset's first tick: held
    assert (held["agent_x.pos"], held["agent_y.pos"]) == (first["agent_x.pos"], first["agent_y.pos"])
    robot.disconnect()


def test_a_late_action_is_an_overrun_and_the_agent_kept_moving_to_the_previous_target(tmp_path, clock):
    robot = make_robot(tmp_path)
    robot.connect()
    start = robot.get_observation()
    up = {"agent_x.pos": start["agent_x.pos"], "agent_y.pos": -0.3}
    robot.send_action(up)
    clock.now += 3.5 / FPS  # 3.5 periods: the agent moved two more steps towards `up` meanwhile
    after_late = robot.get_observation()
    robot.send_action(up)
    moved = robot.get_observation()["agent_y.pos"] - after_late["agent_y.pos"]
    step = ObstacleLayout.preset(2).max_step
    assert moved == pytest.approx(3 * step, abs=1e-5)
    report = robot.report()
    assert report["overruns"] == 1 and report["late_steps"] == 2 and report["overrun_share"] == 1.0
    robot.disconnect()


def test_the_report_times_each_decision_from_its_observation_to_its_action(tmp_path, clock):
    """What the loop spends between handing out an observation and sending its action: the inference time as the
    robot sees it, with its p50 / p99 in the report."""
    robot = make_robot(tmp_path)
    robot.connect()
    # Nine quick decisions (2 ms) and one slow re-plan (20 ms), each tick one period long.
    for i in range(10):
        observation = robot.get_observation()
        think = 0.020 if i == 9 else 0.002
        clock.now += think
        robot.send_action({key: observation[key] for key in AGENT_KEYS})
        clock.now += 1.0 / FPS - think
    report = robot.report()
    expected = np.array([2.0] * 9 + [20.0])
    assert report["decision_p50_ms"] == pytest.approx(np.percentile(expected, 50))
    assert report["decision_p99_ms"] == pytest.approx(np.percentile(expected, 99))
    assert report["decision_max_ms"] == pytest.approx(20.0)
    robot.disconnect()


def test_load_test_views_are_calibrated_copies_of_the_camera(tmp_path, clock):
    robot = make_robot(tmp_path, extra_cameras=2, image_size=32)
    names = ["top", "top_2", "top_3"]
    features = robot.observation_features
    assert [k for k in features if not k.endswith(".pos")] == [n + d for n in names for d in ("", "_depth")]
    robot.connect()
    assert all((tmp_path / "calibration" / f"flowstep_obstacle_sim_{n}_camera.json").is_file() for n in names)
    assert robot.is_calibrated
    observation = robot.get_observation()
    for name in names[1:]:
        np.testing.assert_array_equal(observation[name], observation["top"])
        np.testing.assert_array_equal(observation[f"{name}_depth"], observation["top_depth"])
    observation["top_2"][:] = 0  # separate frames: writing into one leaves the others
    assert observation["top"].any()
    robot.disconnect()
    with pytest.raises(ValueError, match="extra_cameras must be at least 0"):
        make_robot(tmp_path, extra_cameras=-1)


def test_bad_actions_and_a_missing_robot_are_named_errors(tmp_path, clock):
    expert = make_expert(robot_id="nowhere")
    expert.connect()
    with pytest.raises(ConnectionError, match=r"No connected flowstep_obstacle_sim robot with id 'nowhere'"):
        expert.get_action()
    robot = make_robot(tmp_path)
    robot.connect()
    robot.get_observation()
    with pytest.raises(ValueError, match=r"missing \['agent_y.pos'\], unknown \['gripper.pos'\]"):
        robot.send_action({"agent_x.pos": 0.0, "gripper.pos": 1.0})
    with pytest.raises(ValueError, match="non-finite"):
        robot.send_action({"agent_x.pos": float("nan"), "agent_y.pos": 0.0})
    # LeRobot's rollout sends every `.pos` of the observation to return a robot to its start: goal included.
    sent = robot.send_action({**dict.fromkeys(AGENT_KEYS, 0.0), "goal_x.pos": 0.0, "goal_y.pos": 0.85})
    assert sent == dict.fromkeys(AGENT_KEYS, 0.0)
    with pytest.raises(RuntimeError, match="already connected"):
        make_robot(tmp_path).connect()
    robot.disconnect()


@pytest.mark.slow
def test_lerobots_commands_record_train_cache_distil_and_roll_out_on_the_simulated_robot(tmp_path):
    """The whole deployment workflow through LeRobot's commands, on a tiny budget: `lerobot-record` with the
    scripted operator, the calibration written into the dataset, `lerobot-train` of the teacher on point cloud +
    state, its cache, `lerobot-train` of the student, and `lerobot-rollout` of each on the simulated robot."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from lerobot_flowstep.cli import main as flowstep_cli
    from lerobot_flowstep.tools.cache_teacher import build_teacher_cache
    from lerobot_flowstep.tools.lerobot_commands import (
        last_checkpoint,
        lerobot_record,
        lerobot_rollout,
        lerobot_train,
        obstacle_sim_args,
        record_dataset_args,
        train_args,
    )

    repo_id, root, calibration = "local/obstacle_sim", tmp_path / "data", tmp_path / "calibration"
    task = "Move the agent to the goal"
    lerobot_record(
        [
            *obstacle_sim_args(30, 2.0, 0.4, calibration, tmp_path / "record.json"),
            "--teleop.type=flowstep_obstacle_expert",
            *record_dataset_args(repo_id, root, 30, 2.0, 0.4, 3, task),
        ],
        tmp_path / "record.log",
        timeout_s=600,
    )
    recorded = json.loads((tmp_path / "record.json").read_text())
    assert recorded["scenes"] >= 2 and recorded["successes"] >= 1 and recorded["collisions"] == 0, recorded
    dataset = LeRobotDataset(repo_id, root=root)
    assert dataset.num_episodes == 3
    depth_info = dataset.meta.features["observation.images.top_depth"]["info"]
    assert depth_info["is_depth_map"] and depth_info["depth_unit"] == "mm"
    starts = dataset.hf_dataset.filter(lambda row: row["frame_index"] == 0)["observation.state"]
    assert all(float(state[1]) < -0.75 for state in starts)  # every episode is a scene from its start

    assert (
        flowstep_cli(
            ["calibrate", "--dataset-root", str(root), "--camera", "top", "--calibration-file"]
            + [str(calibration / "flowstep_obstacle_sim_top_camera.json")]
        )
        == 0
    )
    # Point cloud + state: the depth map is the only camera input.
    inputs = {"observation.state": {"type": "STATE", "shape": [4]}}
    inputs["observation.images.top_depth"] = {"type": "VISUAL", "shape": [1, 64, 64]}
    teacher_args = [
        f"--policy.input_features={json.dumps(inputs)}",
        "--policy.pointcloud.cameras=[top]",
        "--policy.pointcloud.num_points=64",
        "--policy.pointcloud.bounds_low=[-1.2,-1.2,-0.05]",
        "--policy.pointcloud.bounds_high=[1.2,1.2,0.5]",
        "--policy.horizon=8",
        "--policy.n_action_steps=4",
        "--policy.network.hidden_dim=64",
    ]
    lerobot_train(
        [*train_args("flowstep_teacher", repo_id, root, tmp_path / "teacher", 3, 4), *teacher_args],
        tmp_path / "teacher.log",
        total_steps=3,
    )
    teacher = last_checkpoint(tmp_path / "teacher")
    config = json.loads((teacher / "config.json").read_text())
    assert sorted(config["input_features"]) == ["observation.depth.top", "observation.pointcloud", "observation.state"]
    assert "top" in config["pointcloud"]["fixed_cameras"]
    cache = build_teacher_cache(str(teacher), repo_id, root, tmp_path / "cache.safetensors", num_samples=4, num_steps=2)
    student_args = [f"--policy.teacher_path={teacher}", f"--policy.teacher_cache_path={cache}"]
    student_args += ["--policy.num_teacher_samples=4", "--policy.num_student_samples=4"]
    lerobot_train(
        [*train_args("imle_student", repo_id, root, tmp_path / "student", 3, 4), *student_args],
        tmp_path / "student.log",
        total_steps=3,
    )
    for name, checkpoint in (("teacher", teacher), ("student", last_checkpoint(tmp_path / "student"))):
        report_path = tmp_path / f"rollout_{name}.json"
        lerobot_rollout(
            [
                "--strategy.type=base",
                f"--policy.path={checkpoint}",
                "--policy.device=cpu",
                *obstacle_sim_args(30, 1.2, 0.4, calibration, report_path),
                "--fps=30",
                "--duration=3",
                "--return_to_initial_position=false",
                "--play_sounds=false",
                f"--task={task}",
            ],
            tmp_path / f"rollout_{name}.log",
            timeout_s=600,
        )
        report = json.loads(report_path.read_text())
        # The policy drove the robot; how many actions fit in 3 s depends on the machine's load (27 of 90 at a
        # load average of 8), so the rate is measured by the README's command, not asserted here.
        assert report["scenes"] >= 1 and report["actions"] > 0, report
        assert 0 < report["achieved_hz"] <= 31 and 0 <= report["overrun_share"] <= 1, report
