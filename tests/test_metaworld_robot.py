"""The simulated MetaWorld robot `flowstep_metaworld_sim` and its scripted operator `flowstep_metaworld_expert`, made
by LeRobot's own factories, on a clock the test controls (the robots read `time.perf_counter` of `sim_robot`);
the slow test records with LeRobot's `lerobot-record`, trains a teacher with `lerobot-train` and rolls it out with
`lerobot-rollout`. MuJoCo renders offscreen (MUJOCO_GL, egl unless set)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lerobot.robots import RobotConfig, make_robot_from_config
from lerobot.teleoperators import TeleoperatorConfig, make_teleoperator_from_config

from lerobot_flowstep.datasets.calibration import read_calibration_file
from lerobot_flowstep.metaworld.env import STATE_NAMES, MetaworldRGBDEnv
from lerobot_flowstep.robots.metaworld_sim import FlowstepMetaworldSim
from lerobot_flowstep.robots.metaworld_sim.metaworld_sim import ACTION_KEYS, STATE_KEYS
from lerobot_flowstep.teleoperators.metaworld_expert import FlowstepMetaworldExpert

pytest.importorskip("metaworld", reason="the MetaWorld robot needs the metaworld extra")

FPS = 16  # a period exact in binary, so that the fake clock lands on the phase boundaries
SIZE = 32
TASK = "button-press-v3"


@pytest.fixture(scope="module")
def reference():
    """The env the robot wraps, at the robot's size: what the robot must give, scene by scene."""
    env = MetaworldRGBDEnv(TASK, image_size=SIZE, render_mode=None)
    yield env
    env.close()


def make_robot(tmp_path, **overrides) -> FlowstepMetaworldSim:
    options = {"fps": FPS, "episode_time_s": 6.0, "reset_time_s": 0.5, "image_size": SIZE} | overrides
    config = RobotConfig.get_choice_class("flowstep_metaworld_sim")(calibration_dir=tmp_path / "calibration", **options)
    return make_robot_from_config(config)


def make_expert(**overrides) -> FlowstepMetaworldExpert:
    return make_teleoperator_from_config(TeleoperatorConfig.get_choice_class("flowstep_metaworld_expert")(**overrides))


def test_lerobot_makes_the_robot_with_metaworlds_state_and_a_camera_giving_millimetre_depth(tmp_path, clock, reference):
    robot = make_robot(tmp_path)
    assert isinstance(robot, FlowstepMetaworldSim)
    assert robot.observation_features == {
        **{f"{name}.pos": float for name in STATE_NAMES},
        "corner2": (SIZE, SIZE, 3),
        "corner2_depth": (SIZE, SIZE, 1),
    }
    assert robot.action_features == dict.fromkeys(["hand_x.vel", "hand_y.vel", "hand_z.vel", "gripper.pos"], float)
    robot.connect()
    observation = robot.get_observation()
    expected, _ = reference.reset(seed=0)  # scene 0 is the env's scene of seed 0
    np.testing.assert_array_equal([observation[key] for key in STATE_KEYS], expected["agent_pos"])
    np.testing.assert_array_equal(observation["corner2"], expected["pixels"]["corner2"])
    depth = observation["corner2_depth"]
    assert depth.dtype == np.uint16 and depth.shape == (SIZE, SIZE, 1)
    metres = expected["depth.corner2"][0]
    near = metres < 65.0  # the background lies beyond what uint16 millimetres hold, and saturates
    assert near.mean() > 0.5
    np.testing.assert_allclose(depth[..., 0][near] / 1000.0, metres[near], atol=5e-4)
    assert np.all(depth[..., 0][~near] >= 65000)
    robot.disconnect()
    with pytest.raises(ConnectionError, match="not connected"):
        robot.get_observation()


def test_connecting_writes_the_cameras_calibration_as_the_env_gives_it(tmp_path, clock, reference):
    robot = make_robot(tmp_path, id="arm")
    assert not robot.is_calibrated
    robot.connect()
    path = tmp_path / "calibration" / "arm_corner2_camera.json"
    assert robot.is_calibrated and robot.camera_calibration_path() == path
    calibration = read_calibration_file(path)
    expected, _ = reference.reset(seed=3)
    np.testing.assert_allclose(calibration["intrinsics"], expected["camera.corner2.intrinsics"], rtol=1e-6)
    np.testing.assert_allclose(calibration["extrinsics"], expected["camera.corner2.extrinsics"], atol=1e-6)
    robot.disconnect()


def test_lerobot_calibrate_writes_the_camera_calibration(tmp_path, monkeypatch, reference):
    from lerobot.scripts import lerobot_calibrate

    argv = ["lerobot-calibrate", "--robot.type=flowstep_metaworld_sim", "--robot.id=cam", f"--robot.image_size={SIZE}"]
    monkeypatch.setattr("sys.argv", [*argv, f"--robot.calibration_dir={tmp_path}"])
    lerobot_calibrate.calibrate()
    calibration = read_calibration_file(tmp_path / "cam_corner2_camera.json")
    expected, _ = reference.reset(seed=0)
    np.testing.assert_allclose(calibration["intrinsics"], expected["camera.corner2.intrinsics"], rtol=1e-6)


def test_the_expert_solves_each_scene_on_lerobot_records_schedule(tmp_path, clock):
    """Two scenes, each live for episode_time_s and solved by MetaWorld's expert within it, the second drawn with
    the next seed at the reset and held still through it."""
    robot = make_robot(tmp_path, seed=7, report_path=tmp_path / "report.json")
    expert = make_expert()
    expert.connect()  # before the robot, as lerobot-record does
    robot.connect()

    def tick():
        observation = robot.get_observation()
        robot.send_action(expert.get_action())
        clock.now += 1.0 / FPS
        return observation

    starts, held = [], []
    for _ in range(2):
        starts.append(tick())
        for _ in range(6 * FPS - 1):
            tick()
        first = tick()  # the reset phase: the next scene, held whatever the operator sends
        for _ in range(FPS // 2 - 1):
            held.append(tick()["hand_z.pos"] == first["hand_z.pos"])
    assert all(held) and robot.scene_index == 2
    robot.disconnect()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scenes"] == 2 and report["successes"] == 2 and report["success_rate"] == 1.0, report
    assert report["task"] == TASK and report["seeds"] == [7, 8]
    assert report["overruns"] == 0 and report["achieved_hz"] == pytest.approx(FPS)


def test_a_late_action_counts_and_the_arm_held_still_in_the_periods_without_one(tmp_path, clock, reference):
    """3.5 periods late: an overrun, and two periods in which the hand's displacement was zero and the gripper
    kept its command, exactly as stepping the env so."""
    robot = make_robot(tmp_path)
    robot.connect()
    robot.get_observation()
    close_and_rise = {"hand_x.vel": 0.2, "hand_y.vel": -0.5, "hand_z.vel": 1.0, "gripper.pos": 1.0}
    robot.send_action(close_and_rise)
    clock.now += 3.5 / FPS
    robot.get_observation()
    sideways = {"hand_x.vel": 1.0, "hand_y.vel": 0.0, "hand_z.vel": 0.0, "gripper.pos": -1.0}
    robot.send_action(sideways)
    observation = robot.get_observation()
    reference.reset(seed=0)
    for action in ([0.2, -0.5, 1.0, 1.0], [0, 0, 0, 1.0], [0, 0, 0, 1.0], [1.0, 0, 0, -1.0]):
        expected, *_ = reference.step(np.array(action, dtype=np.float32))
    np.testing.assert_array_equal([observation[key] for key in STATE_KEYS], expected["agent_pos"])
    report = robot.report()
    assert report["overruns"] == 1 and report["late_steps"] == 2 and report["overrun_share"] == 1.0
    assert report["actions"] == 2
    robot.disconnect()


def test_the_report_gives_the_control_rate_and_each_decisions_time(tmp_path, clock):
    robot = make_robot(tmp_path)
    robot.connect()
    for i in range(10):  # nine quick decisions (2 ms) and one slow one (20 ms), each tick one period long
        robot.get_observation()
        think = 0.020 if i == 9 else 0.002
        clock.now += think
        robot.send_action(dict.fromkeys(ACTION_KEYS, 0.0))
        clock.now += 1.0 / FPS - think
    report = robot.report()
    # The slow decision made its action 18 ms late: an interval of 80.5 ms, an overrun at 16 fps (62.5 ms).
    intervals = np.array([62.5] * 8 + [80.5]) / 1e3
    assert report["achieved_hz"] == pytest.approx(len(intervals) / intervals.sum())
    assert report["overrun_share"] == pytest.approx(1 / 9) and report["interval_max_ms"] == pytest.approx(80.5)
    expected = np.array([2.0] * 9 + [20.0])
    assert report["decision_p50_ms"] == pytest.approx(np.percentile(expected, 50))
    assert report["decision_p99_ms"] == pytest.approx(np.percentile(expected, 99))
    assert report["decision_max_ms"] == pytest.approx(20.0)
    assert report["scenes"] == 0 and report["success_rate"] is None  # no live phase has ended yet
    robot.disconnect()


def test_lerobots_return_to_the_start_moves_the_hand_to_the_pose_untimed(tmp_path, clock, caplog):
    """LeRobot's rollout returns a robot to its start by sending the observation's `.pos` keys (here the state, a
    pose) as actions: the hand's set-point moves there at MetaWorld's top speed (1 cm a step) and the fingers open
    as they were; not the loop's actions, so not counted. Run through LeRobot's own return, which only logs a
    refused action."""
    from lerobot.rollout.context import HardwareContext
    from lerobot.rollout.robot_wrapper import ThreadSafeRobot
    from lerobot.rollout.strategies.core import RolloutStrategy

    robot = make_robot(tmp_path)
    robot.connect()
    start = robot.get_observation()
    initial_position = {k: v for k, v in start.items() if k.endswith(".pos")}  # as lerobot-rollout keeps it
    for _ in range(10):
        robot.send_action({"hand_x.vel": 1.0, "hand_y.vel": 0.0, "hand_z.vel": 0.0, "gripper.pos": 1.0})
        clock.now += 1.0 / FPS
    moved = robot.get_observation()
    assert moved["hand_x.pos"] - start["hand_x.pos"] > 0.04
    assert moved["gripper_opening.pos"] < start["gripper_opening.pos"] - 0.2  # closing
    sent = robot.send_action({key: start[key] for key in STATE_KEYS})
    assert sent["hand_x.vel"] == -1.0 and sent["gripper.pos"] == -1.0  # back along x, fingers opening
    with caplog.at_level("WARNING"):
        hardware = HardwareContext(ThreadSafeRobot(robot), None, initial_position)
        RolloutStrategy._return_to_initial_position(hardware, duration_s=0.6, fps=50)
    assert not [r for r in caplog.records if "Could not return" in r.getMessage()], caplog.text
    back = robot.get_observation()
    # Within the few millimetres by which MetaWorld's hand trails its set-point.
    hand = ("hand_x.pos", "hand_y.pos", "hand_z.pos")
    np.testing.assert_allclose([back[k] for k in hand], [start[k] for k in hand], atol=1e-2)
    assert back["gripper_opening.pos"] > moved["gripper_opening.pos"] + 0.2  # opened again
    assert robot.report()["actions"] == 10  # the loop's ten, not the return's
    robot.disconnect()


def test_injected_faults_are_the_shared_ones(tmp_path, clock):
    """The fault rig of every simulated robot (`--robot.faults.*`), here with MetaWorld's camera."""
    from lerobot.utils.errors import DeviceNotConnectedError

    from lerobot_flowstep.robots.common import SimFaultsConfig

    faults = SimFaultsConfig(0, disconnect_at_step=3, drop_frame_at_step=2)
    robot = make_robot(tmp_path, faults=faults, report_path=tmp_path / "report.json")
    robot.connect()
    robot.get_observation()
    robot.send_action(dict.fromkeys(ACTION_KEYS, 0.0))
    clock.now += 1.0 / FPS
    with pytest.raises(TimeoutError, match=r"waiting for a frame from camera 'corner2' at step 2 of scene 0"):
        robot.get_observation()
    with pytest.raises(DeviceNotConnectedError, match=r"flowstep_metaworld_sim lost its connection at step 3"):
        robot.get_observation()
    robot.disconnect()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["faults"] == {
        "scene": 0,
        "link_lost_at_step": 3,
        "frame_dropped_at_step": 2,
        "actions_after_fault": 0,
    }


def test_bad_actions_and_a_missing_robot_are_named_errors(tmp_path, clock):
    expert = make_expert(robot_id="nowhere")
    expert.connect()
    with pytest.raises(ConnectionError, match=r"No connected flowstep_metaworld_sim robot with id 'nowhere'"):
        expert.get_action()
    robot = make_robot(tmp_path)
    robot.connect()
    observation = robot.get_observation()
    with pytest.raises(ValueError, match=r"missing \['hand_z.vel', 'gripper.pos'\], unknown \['gripper.vel'\]"):
        robot.send_action({"hand_x.vel": 0.0, "hand_y.vel": 0.0, "gripper.vel": 1.0})
    # The obstacle robot's absolute target, or a pose mixed with the displacement: neither is this robot's.
    with pytest.raises(ValueError, match=r"unknown \['hand_x.pos'\]"):
        robot.send_action({**dict.fromkeys(ACTION_KEYS, 0.0), "hand_x.pos": 0.0})
    with pytest.raises(ValueError, match=r"missing \['hand_x.vel', .*unknown \['hand_x.pos', 'hand_y.pos'\]"):
        robot.send_action({"hand_x.pos": 0.0, "hand_y.pos": 0.7})  # a pose without the hand's height
    with pytest.raises(ValueError, match="non-finite"):
        robot.send_action({**dict.fromkeys(ACTION_KEYS, 0.0), "hand_y.vel": float("nan")})
    # MetaWorld clips its action to [-1, 1]; the robot returns what it executed, as LeRobot's robots do.
    sent = robot.send_action({"hand_x.vel": 3.0, "hand_y.vel": -2.0, "hand_z.vel": 0.5, "gripper.pos": 1.0})
    assert sent == {"hand_x.vel": 1.0, "hand_y.vel": -1.0, "hand_z.vel": 0.5, "gripper.pos": 1.0}
    assert robot.get_observation()["hand_x.pos"] > observation["hand_x.pos"]
    with pytest.raises(RuntimeError, match="already connected"):
        make_robot(tmp_path).connect()
    robot.disconnect()
    with pytest.raises(ValueError, match="Unknown MetaWorld task 'button-pushing'"):
        make_robot(tmp_path, task="button-pushing")


@pytest.mark.slow
def test_lerobots_commands_record_the_expert_train_a_teacher_and_roll_it_out_on_the_metaworld_robot(tmp_path):
    """`lerobot-record` with MetaWorld's expert (2 short episodes at 32 px), the calibration written into the
    dataset, `lerobot-train` of the teacher on point cloud + state for 2 steps, and `lerobot-rollout` of it on the
    robot, returning the robot to its start at the end as LeRobot does by default."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from lerobot_flowstep.cli import main as flowstep_cli
    from lerobot_flowstep.tools.lerobot_commands import (
        last_checkpoint,
        lerobot_record,
        lerobot_rollout,
        lerobot_train,
        record_dataset_args,
        sim_robot_args,
        train_args,
    )

    repo_id, root, calibration = "local/metaworld_sim", tmp_path / "data", tmp_path / "calibration"
    robot = ["--robot.image_size=32", f"--robot.task={TASK}"]
    lerobot_record(
        [
            *sim_robot_args("flowstep_metaworld_sim", 30, 3.0, 0.3, calibration, tmp_path / "record.json"),
            *robot,
            "--teleop.type=flowstep_metaworld_expert",
            *record_dataset_args(repo_id, root, 30, 3.0, 0.3, 2, "Press the button"),
        ],
        tmp_path / "record.log",
        timeout_s=600,
    )
    recorded = json.loads((tmp_path / "record.json").read_text())
    # The expert needs about 60 steps, 2 s at 30 fps: a loaded machine's late ticks may cost one scene its success.
    assert recorded["scenes"] >= 1 and recorded["successes"] >= 1 and recorded["seeds"][:2] == [0, 1], recorded
    dataset = LeRobotDataset(repo_id, root=root)
    assert dataset.num_episodes == 2
    features = dataset.meta.features
    assert features["observation.state"]["names"] == list(STATE_KEYS)
    assert features["action"]["names"] == list(ACTION_KEYS)
    depth = features["observation.images.corner2_depth"]
    assert list(depth["shape"]) == [32, 32, 1]
    assert depth["info"]["is_depth_map"] and depth["info"]["depth_unit"] == "mm"
    camera_file = calibration / "flowstep_metaworld_sim_corner2_camera.json"
    assert (
        flowstep_cli(
            ["calibrate", "--dataset-root", str(root), "--camera", "corner2", "--calibration-file", str(camera_file)]
        )
        == 0
    )

    inputs = {
        "observation.state": {"type": "STATE", "shape": [len(STATE_KEYS)]},
        "observation.images.corner2_depth": {"type": "VISUAL", "shape": [1, 32, 32]},
    }
    teacher_args = [
        f"--policy.input_features={json.dumps(inputs)}",
        "--policy.pointcloud.cameras=[corner2]",
        "--policy.pointcloud.num_points=64",
        # The table top, as configs/metaworld/teacher_pc.json crops it.
        "--policy.pointcloud.bounds_low=[-0.6,0.2,0.005]",
        "--policy.pointcloud.bounds_high=[0.6,1.0,0.6]",
        "--policy.horizon=8",
        "--policy.n_action_steps=4",
        "--policy.network.hidden_dim=64",
    ]
    lerobot_train(
        [*train_args("flowstep_teacher", repo_id, root, tmp_path / "teacher", 2, 4), *teacher_args],
        tmp_path / "teacher.log",
        total_steps=2,
    )
    teacher = last_checkpoint(tmp_path / "teacher")
    report_path = tmp_path / "rollout.json"
    lerobot_rollout(
        [
            "--strategy.type=base",
            f"--policy.path={teacher}",
            "--policy.device=cpu",
            *sim_robot_args("flowstep_metaworld_sim", 30, 1.5, 0.4, calibration, report_path),
            *robot,
            "--robot.seed=1000",
            "--fps=30",
            "--duration=3",
            "--play_sounds=false",
            "--task=Press the button",
        ],
        tmp_path / "rollout.log",
        timeout_s=600,
    )
    report = json.loads(report_path.read_text())
    # A 2-step teacher: what is tested is that it drove the robot, timed, not that it succeeds.
    assert report["scenes"] >= 1 and report["seeds"][0] == 1000 and report["actions"] > 0, report
    assert 0 < report["achieved_hz"] <= 31 and 0 <= report["overrun_share"] <= 1, report
    assert {"decision_p50_ms", "decision_p99_ms", "decision_max_ms"} <= set(report), report
    log = (tmp_path / "rollout.log").read_text()
    # LeRobot's return to the start sent the robot its state as a pose, which it took (a refusal is only logged).
    assert "Returning robot to initial position" in log and "Could not return to initial position" not in log, log
