"""Async inference on localhost: the round trip and the control rate the simulated robot achieves, per policy.

`lerobot-flowstep serve` runs as its own process (LeRobot's `PolicyServer` with the plugin's types); the robot
client (LeRobot's `RobotClient` with the simulated RGB-D robot `flowstep_obstacle_sim` at 30 fps) runs here for
`--duration` seconds per policy and LeRobot option set. The policies have the architecture of README's sim-robot
training commands (state + the 64x64 depth map as a 256-point cloud; horizon 16, 2 observation steps, so chunks of
15 actions from the newest observation; the teacher at 10 Euler steps, the student with 16 candidates), with
untrained weights: timing does not depend on them (`lerobot_flowstep/tools/sim_checkpoints.py`).

Reported per run:
- round trip: observation captured by the client -> its chunk received (client side; includes waiting in the
  server's queue, inference, pickling and gRPC both ways);
- server: the server's own time per chunk (observation preparation, preprocessor with the point-cloud step, the
  policy, postprocessor, pickling), from the line LeRobot's `GetActions` logs;
- the robot's report: achieved control rate, share of actions later than the period (+10 %), p50/p99 interval;
  an action is late when the client's queue ran empty and the robot waited for the next chunk.

`--similarity-atol`: LeRobot's server skips an observation whose state is within this distance of the last one it
predicted from, unless the client's queue is empty (LeRobot's value: 1, for joint angles in degrees); 0 predicts
from every observation the client sends.

    uv run python benchmarks/async_inference.py --duration 20 --output outputs/bench_async
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lerobot_flowstep.robots.obstacle_sim import FlowstepObstacleSimConfig
from lerobot_flowstep.tools.sim_checkpoints import write_sim_robot_checkpoint

# What LeRobot's `GetActions` logs per chunk: the server's time from the observation to the pickled chunk.
_SERVER_TIME = re.compile(r"Action chunk #(\d+) generated \| Total time: ([\d.]+)ms")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(output: Path, port: int, atol: float, threads: int) -> tuple[subprocess.Popen, Path]:
    log = output / f"server_atol{atol:g}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    args = [str(Path(sys.executable).parent / "lerobot-flowstep"), "serve", "--host=127.0.0.1", f"--port={port}"]
    args += ["--inference_latency=0", f"--observation_similarity_atol={atol}"]
    server = subprocess.Popen(args, cwd=output, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while "PolicyServer started" not in log.read_text():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"The server did not start; log {log}:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    return server, log


def server_times_ms(log: Path, start: int) -> list[float]:
    """The server's time per chunk, from the log lines written after character `start`."""
    return [float(m.group(2)) for m in _SERVER_TIME.finditer(log.read_text()[start:])]


def run(args: argparse.Namespace) -> list[dict]:
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    robot = FlowstepObstacleSimConfig(calibration_dir=output / "calibration")
    teacher = write_sim_robot_checkpoint("flowstep_teacher", output / "teacher", robot)
    student = write_sim_robot_checkpoint("imle_student", output / "student", robot, teacher_path=teacher)
    os.chdir(output)  # LeRobot's async modules write logs/ into the working directory when imported
    from lerobot.robots import RobotConfig

    from lerobot_flowstep.serving.client import FlowstepRobotClientConfig, run_robot_client

    rows = []
    for atol in args.similarity_atol:
        port = free_port()
        server, log = start_server(output, port, atol, args.threads)
        try:
            for name, path in (("imle_student", student), ("flowstep_teacher", teacher)):
                report_path = output / f"robot_{name}_atol{atol:g}.json"
                config = FlowstepRobotClientConfig(
                    robot=RobotConfig.get_choice_class("flowstep_obstacle_sim")(
                        calibration_dir=output / "calibration",
                        fps=args.fps,
                        episode_time_s=args.duration + 60,  # one scene: no reset phase, every action is timed
                        report_path=report_path,
                    ),
                    server_address=f"127.0.0.1:{port}",
                    policy_type=name,
                    pretrained_name_or_path=str(path),
                    actions_per_chunk=15,
                    fps=args.fps,
                    duration_s=args.duration,
                )
                start = len(log.read_text())
                summary = run_robot_client(config)
                report = json.loads(report_path.read_text())
                inference = np.asarray(server_times_ms(log, start))
                row = {
                    "policy": name,
                    "similarity_atol": atol,
                    "chunks": summary["chunks"],
                    "actions": report["actions"],
                    "round_trip_p50_ms": summary["round_trip_p50_ms"],
                    "round_trip_p99_ms": summary["round_trip_p99_ms"],
                    "server_p50_ms": float(np.percentile(inference, 50)),
                    "server_p99_ms": float(np.percentile(inference, 99)),
                    "achieved_hz": report["achieved_hz"],
                    "overrun_share": report["overrun_share"],
                    "interval_p50_ms": report["interval_p50_ms"],
                    "interval_p99_ms": report["interval_p99_ms"],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    (output / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of control per run")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--similarity-atol", type=float, nargs="+", default=[1.0, 0.0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--output", default="outputs/bench_async")
    args = parser.parse_args()
    rows = run(args)
    print(
        "\n| policy | similarity atol | chunks | actions | round trip p50 / p99 (ms) | server p50 / p99 (ms) "
        "| achieved Hz | late actions | interval p50 / p99 (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['policy']} | {r['similarity_atol']:g} | {r['chunks']} | {r['actions']} | "
            f"{r['round_trip_p50_ms']:.1f} / {r['round_trip_p99_ms']:.1f} | "
            f"{r['server_p50_ms']:.1f} / {r['server_p99_ms']:.1f} | {r['achieved_hz']:.1f} | "
            f"{100 * r['overrun_share']:.1f} % | {r['interval_p50_ms']:.1f} / {r['interval_p99_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
