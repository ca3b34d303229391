"""LeRobot's async inference with the plugin's policies: `FlowstepPolicyServer` and `FlowstepRobotClient` over
localhost gRPC, in this process, with the simulated robot; the commands themselves in the slow test."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lerobot.robots import RobotConfig

from lerobot_flowstep.robots.obstacle_sim import FlowstepObstacleSimConfig, connected_robot
from lerobot_flowstep.tools.sim_checkpoints import sim_robot_dataset_features, write_sim_robot_checkpoint

CHUNK = 15  # horizon 16, 2 observation steps: the chunk from the newest observation on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    robot = FlowstepObstacleSimConfig(calibration_dir=root / "calibration")
    teacher = write_sim_robot_checkpoint("flowstep_teacher", root / "teacher", robot, num_points=64)
    student = write_sim_robot_checkpoint("imle_student", root / "student", robot, teacher_path=teacher)
    regression = write_sim_robot_checkpoint("flowstep_regression", root / "regression", robot, num_points=64)
    return {"flowstep_teacher": teacher, "imle_student": student, "flowstep_regression": regression}


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    """The serving modules, imported in a scratch folder: LeRobot's async modules make `logs/` in the working
    directory and replace the root logger's handlers when imported, which the rest of the suite must not see."""
    pytest.importorskip("grpc", reason="LeRobot's async inference needs the serve extra (lerobot[async])")
    root = logging.getLogger()
    handlers, level, cwd = root.handlers[:], root.level, os.getcwd()
    os.chdir(tmp_path_factory.mktemp("serving"))
    try:
        from lerobot_flowstep.serving import client, server
    finally:
        os.chdir(cwd)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    return client, server


def start(serving, server_class=None, **options):
    _, server = serving
    config = server.FlowstepPolicyServerConfig(
        host="127.0.0.1", port=free_port(), inference_latency=0.0, observation_similarity_atol=0.0, **options
    )
    grpc_server, policy_server, port = server.start_server(config, server_class or server.FlowstepPolicyServer)
    return grpc_server, policy_server, f"127.0.0.1:{port}"


def client_config(serving, tmp_path, address, policy_type, path, robot=None, **options):
    client, _ = serving
    robot = robot or {}
    return client.FlowstepRobotClientConfig(
        robot=RobotConfig.get_choice_class("flowstep_obstacle_sim")(
            calibration_dir=tmp_path / "calibration", episode_time_s=30.0, **robot
        ),
        server_address=address,
        policy_type=policy_type,
        pretrained_name_or_path=str(path),
        actions_per_chunk=CHUNK,
        fps=30,
        **options,
    )


def test_the_policy_needs_the_robots_state_and_depth_map_at_its_size(tmp_path, checkpoints):
    from lerobot.configs import PreTrainedConfig

    from lerobot_flowstep.serving.features import required_robot_features, robot_feature_problems

    config = PreTrainedConfig.from_pretrained(checkpoints["imle_student"])
    # The point cloud is made from the depth map by the preprocessor, so the robot gives the map, channel last.
    assert required_robot_features(config) == {"observation.state": (4,), "observation.images.top_depth": (64, 64, 1)}
    robot = FlowstepObstacleSimConfig(calibration_dir=tmp_path)
    assert robot_feature_problems(config, sim_robot_dataset_features(robot)) == []
    other = sim_robot_dataset_features(FlowstepObstacleSimConfig(calibration_dir=tmp_path, camera="front"))
    assert robot_feature_problems(config, other) == ["'observation.images.top_depth' (64, 64, 1) is missing"]
    renamed = {"observation.images.front_depth": "observation.images.top_depth"}
    assert robot_feature_problems(config, other, rename_map=renamed) == []


def test_a_chunk_is_unnormalized_at_once_as_lerobots_server_does_action_by_action(checkpoints):
    """The server passes the whole chunk (1, T, A) through the postprocessor; LeRobot's loops over its actions."""
    import torch
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    config = PreTrainedConfig.from_pretrained(checkpoints["flowstep_teacher"])
    stats = {"observation.state": {"min": -torch.ones(4), "max": torch.ones(4)}}
    stats["action"] = {"min": torch.tensor([-1.0, -2.0]), "max": torch.tensor([3.0, 0.5])}
    _, postprocessor = make_pre_post_processors(config, dataset_stats=stats)
    chunk = torch.rand(1, CHUNK, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    per_action = torch.stack([postprocessor(chunk[:, i]) for i in range(CHUNK)], dim=1)
    torch.testing.assert_close(postprocessor(chunk), per_action)
    torch.testing.assert_close(per_action[0, :, 1], (chunk[0, :, 1] + 1) / 2 * 2.5 - 2.0)


@pytest.mark.parametrize("policy_type", ["imle_student", "flowstep_teacher", "flowstep_regression"])
def test_lerobots_server_and_client_drive_the_simulated_robot(serving, checkpoints, tmp_path, policy_type):
    client, _ = serving
    grpc_server, _, address = start(serving)
    try:
        config = client_config(
            serving, tmp_path, address, policy_type, checkpoints[policy_type], duration_s=2.5,
            summary_path=tmp_path / "summary.json",
        )  # fmt: skip
        config.robot.report_path = tmp_path / "report.json"
        summary = client.run_robot_client(config)
    finally:
        grpc_server.stop(None)
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["failure"] is None and summary["chunks"] >= 1 and summary["actions_executed"] >= 1, summary
    assert 0 < summary["round_trip_p50_ms"] <= summary["round_trip_max_ms"]
    first, last = summary["first_state"], summary["last_state"]
    assert (first["agent_x.pos"], first["agent_y.pos"]) != (last["agent_x.pos"], last["agent_y.pos"])  # it moved
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["actions"] == summary["actions_executed"] and report["achieved_hz"] > 0
    with pytest.raises(ConnectionError):
        connected_robot(None)  # disconnected at the end of the run


@pytest.mark.parametrize(
    ("policy_type", "checkpoint", "robot", "message"),
    [
        (
            "flowstep_nonesuch",
            "imle_student",
            {},
            r"does not serve the policy type 'flowstep_nonesuch'; it serves \[.*'act'.*'imle_student'",
        ),
        ("flowstep_teacher", "imle_student", {}, "holds a policy of type 'imle_student'"),
        (
            "imle_student",
            "/nonexistent/student",
            {},
            "Cannot load the 'imle_student' policy from '/nonexistent/student': no such folder on the server's machine",
        ),
        (
            "imle_student",
            "imle_student",
            {"observe_goal": False, "image_size": 32},
            r"'observation.state' is \(2,\) from the robot, the policy was trained on \(4,\); "
            r"'observation.images.top_depth' is \(32, 32, 1\) from the robot, the policy was trained on \(64, 64, 1\)",
        ),
    ],
)
def test_a_refused_policy_is_a_named_error_and_the_robot_never_moves(
    serving, checkpoints, tmp_path, policy_type, checkpoint, robot, message
):
    client, _ = serving
    grpc_server, policy_server, address = start(serving)
    try:
        path = checkpoints.get(checkpoint, checkpoint)
        config = client_config(serving, tmp_path, address, policy_type, path, robot, duration_s=5)
        config.robot.report_path = tmp_path / "report.json"
        with pytest.raises(
            client.PolicyServerError, match=f"at {address} refused the policy: INVALID_ARGUMENT: .*{message}"
        ):
            client.run_robot_client(config)
    finally:
        grpc_server.stop(None)
    assert policy_server.policy is None  # a refused policy is not kept to serve later observations
    assert json.loads((tmp_path / "report.json").read_text())["actions"] == 0
    with pytest.raises(ConnectionError):
        connected_robot(None)


def test_a_server_failing_mid_run_stops_the_robot_at_once_without_the_rest_of_its_chunk(serving, checkpoints, tmp_path):
    """The first chunk arrives, the next inference fails: the client stops with the server's error and drops the
    actions it still held. LeRobot's client would execute the rest of the chunk and then stand, asking forever."""
    client, server = serving

    class FailingServer(server.FlowstepPolicyServer):
        def _predict_flowstep_chunk(self, observation_t):
            if self.last_processed_obs is not None:
                raise FloatingPointError("injected: the policy produced NaN actions")
            return super()._predict_flowstep_chunk(observation_t)

    grpc_server, _, address = start(serving, FailingServer)
    try:
        # Ask again after the first action: the failure comes while most of the first chunk is still queued.
        config = client_config(
            serving, tmp_path, address, "imle_student", checkpoints["imle_student"], chunk_size_threshold=0.95,
            duration_s=20, summary_path=tmp_path / "summary.json",
        )  # fmt: skip
        config.robot.report_path = tmp_path / "report.json"
        started = time.monotonic()
        with pytest.raises(client.PolicyServerError) as failure:
            client.run_robot_client(config)
    finally:
        grpc_server.stop(None)
    assert time.monotonic() - started < 15  # stopped by the failure, not by duration_s
    assert "failed while the robot ran (GetActions, INTERNAL: Inference of the 'imle_student' policy failed" in str(
        failure.value
    )
    assert "FloatingPointError: injected" in str(failure.value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["chunks"] == 1 and summary["failure"] == str(failure.value)
    # Fewer than the chunk's 15 actions reached the robot: the rest was dropped with the failure.
    assert json.loads((tmp_path / "report.json").read_text())["actions"] == summary["actions_executed"] < CHUNK


def test_a_second_server_on_a_port_in_use_is_a_named_error(serving):
    _, server = serving
    grpc_server, _, address = start(serving)
    try:
        config = server.FlowstepPolicyServerConfig(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]))
        with pytest.raises(OSError, match=f"Cannot listen on {address} .*give a free --port"):
            server.start_server(config)
    finally:
        grpc_server.stop(None)


def test_a_chunk_of_another_robots_action_size_is_refused(serving, checkpoints, tmp_path):
    import torch
    from lerobot.async_inference.helpers import TimedAction

    client, _ = serving
    robot_client = client.FlowstepRobotClient(
        client_config(serving, tmp_path, f"127.0.0.1:{free_port()}", "imle_student", checkpoints["imle_student"])
    )
    try:
        chunk = [TimedAction(timestamp=time.time(), timestep=i, action=torch.zeros(3)) for i in range(4)]
        robot_client._aggregate_action_queues(chunk)
        assert robot_client.action_queue.empty() and not robot_client.running
        assert "sent actions of shape (3,); the robot takes 2 (['agent_x.pos', 'agent_y.pos'])" in str(
            robot_client.failure
        )
    finally:
        robot_client.stop()


def run_command(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    # Ctrl-C as a terminal delivers it: under a background job (CI started with `&`) SIGINT is ignored, the
    # children inherit that, and Python then installs no KeyboardInterrupt handler, so SIGINT would stop nothing.
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(predicate, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"No {what} within {timeout_s} s; log {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.mark.slow
def test_the_commands_serve_the_student_to_our_client_and_the_teacher_to_lerobots_own(checkpoints, tmp_path):
    """`lerobot-flowstep serve` and `lerobot-flowstep robot-client` as a user runs them, then LeRobot's unmodified
    `python -m lerobot.async_inference.robot_client`, which finds the simulated robot by plugin discovery alone,
    stopped by Ctrl-C (SIGINT) as LeRobot's client is."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    server_log = tmp_path / "server.log"
    server = run_command(
        [str(bin_dir / "lerobot-flowstep"), "serve", "--host=127.0.0.1", f"--port={port}", "--inference_latency=0"],
        tmp_path,
        server_log,
    )
    robot = ["--robot.type=flowstep_obstacle_sim", f"--robot.calibration_dir={tmp_path / 'calibration'}"]
    robot += ["--robot.episode_time_s=30", f"--server_address=127.0.0.1:{port}", f"--actions_per_chunk={CHUNK}"]
    try:
        wait_for(lambda: "PolicyServer started" in server_log.read_text(), 300, "server start", server_log)
        student_log = tmp_path / "student.log"
        student = run_command(
            [str(bin_dir / "lerobot-flowstep"), "robot-client", *robot, "--policy_type=imle_student"]
            + [f"--pretrained_name_or_path={checkpoints['imle_student']}", "--duration_s=3"]
            + [f"--robot.report_path={tmp_path / 'student.json'}", f"--summary_path={tmp_path / 'summary.json'}"],
            tmp_path,
            student_log,
        )
        assert student.wait(timeout=300) == 0, student_log.read_text()[-3000:]
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["chunks"] >= 1 and summary["actions_executed"] >= 1, summary
        assert json.loads((tmp_path / "student.json").read_text())["actions"] == summary["actions_executed"]

        teacher_log = tmp_path / "teacher.log"
        teacher = run_command(
            [sys.executable, "-m", "lerobot.async_inference.robot_client", *robot, "--policy_type=flowstep_teacher"]
            + [f"--pretrained_name_or_path={checkpoints['flowstep_teacher']}"]
            + [f"--robot.report_path={tmp_path / 'teacher.json'}"],
            tmp_path,
            teacher_log,
        )
        chunks_before = server_log.read_text().count("Action chunk #")
        wait_for(
            lambda: server_log.read_text().count("Action chunk #") >= chunks_before + 3,
            300,
            "teacher chunks",
            server_log,
        )
        teacher.send_signal(signal.SIGINT)
        teacher.wait(timeout=60)
        report = json.loads((tmp_path / "teacher.json").read_text())  # written as the robot disconnected
        assert report["actions"] >= 1, report
    finally:
        for process in (server, locals().get("student"), locals().get("teacher")):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
