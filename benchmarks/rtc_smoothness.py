"""Does real-time chunking keep chunk boundaries smooth? The teacher (and the student) on the simulated robot
`flowstep_obstacle_sim`, with an injected inference delay, with and without RTC.

LeRobot's RTC engine (`lerobot-rollout --inference.type=rtc`) computes a chunk in a background thread while the
robot executes the previous one; the new chunk replaces the queue once it arrives, minus the `delay` actions the
robot executed meanwhile. Where the old and the new chunk disagree at that point, the commanded action jumps. This
benchmark runs the same queue logic (LeRobot's `ActionQueue`, the left-over it keeps, the padding the engine applies
to it) in the control loop itself, the delay injected as a number of control periods: each chunk is computed from
the observation of tick k and merged at tick k + delay. A thread's real latency on a shared CPU would make each run
different; here both settings see the same delays and the same scenes. The robot keeps its real time (the loop
waits for the wall clock), so its report (success, overruns) is the one lerobot-rollout would print.

Settings, at each delay:
- `rtc`: the teacher gets `prev_chunk_left_over` and `inference_delay` (LeRobot's RTC guidance);
- `no_rtc`: the same engine, the left-over not given: each chunk is sampled afresh (what the engine does for a policy
  without RTC guidance; `--inference.rtc.enabled=false` would instead append chunks, executing stale ones);
- with `--student`: the student's RTC rule (the candidate nearest the left-over) against its own candidate rule.

Measured, on the executed (unnormalized) actions, within a scene: `boundary_jump`, the distance between the last
action of the old chunk and the first executed action of the new one, and `step`, the distance between consecutive
actions within a chunk (the motion itself), plus the robot's success rate.

The policies are trained here, on expert demonstrations of the robot's state (agent and goal positions), with one
observation frame (n_obs_steps=1: the engine passes the policy one frame):

    uv run python benchmarks/rtc_smoothness.py --output outputs/rtc_smoothness/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.datasets.atomic import atomic_lerobot_dataset
from lerobot_flowstep.datasets.obstacle_dataset import expert_episodes
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig
from lerobot_flowstep.robots.obstacle_sim.obstacle_sim import AGENT_KEYS, GOAL_KEYS
from lerobot_flowstep.tools.cache_teacher import cache_from_samples
from lerobot_flowstep.tools.checkpoints import load_checkpoint
from lerobot_flowstep.tools.training import load_samples, train_policy_on_dataset

REPO_ID = "local/obstacle_sim_state"
STATE_NAMES = [*AGENT_KEYS, *GOAL_KEYS]


def write_demonstrations(root: Path, episodes: int, fps: int, seed: int) -> None:
    """The scripted expert's episodes with the simulated robot's state (agent, then goal) and action (the agent's
    target): the layout `lerobot-record --robot.type=flowstep_obstacle_sim` records, without the camera."""
    features = {
        "observation.state": {"dtype": "float32", "shape": (4,), "names": STATE_NAMES},
        "action": {"dtype": "float32", "shape": (2,), "names": list(AGENT_KEYS)},
    }
    with atomic_lerobot_dataset(root, repo_id=REPO_ID, fps=fps, features=features, use_videos=False) as dataset:
        for episode in expert_episodes(episodes, num_modes=2, seed=seed):
            for observation, action in zip(episode.observations[:-1], episode.actions, strict=True):
                state = np.concatenate([observation["agent_pos"], observation["environment_state"][:2]])
                dataset.add_frame(
                    {
                        "observation.state": state.astype(np.float32),
                        "action": np.asarray(action, dtype=np.float32),
                        "task": "Move the agent to the goal",
                    }
                )
            dataset.save_episode()


def train(args: argparse.Namespace, root: Path) -> dict[str, Path]:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    out = args.output_dir
    network = NetworkConfig(hidden_dim=256, num_blocks=3)
    common = {"device": "cpu", "n_obs_steps": 1, "horizon": 16, "n_action_steps": 8}
    teacher_cfg = FlowstepTeacherConfig(**common, network=network, optimizer_lr=1e-3)
    meta = LeRobotDatasetMetadata(REPO_ID, root=root)
    samples = load_samples(REPO_ID, root, teacher_cfg, meta)
    teacher, teacher_path, _ = train_policy_on_dataset(
        teacher_cfg, REPO_ID, root, out / "teacher", args.teacher_steps, 64, args.seed, "teacher", samples
    )
    paths = {"teacher": teacher_path}
    if args.student:
        cache = out / "teacher_samples.safetensors"
        cache_from_samples(teacher, str(teacher_path), samples, cache, 16, 10, "heun", args.seed, dataset_meta=meta)
        student_cfg = ImleStudentConfig(
            device="cpu", teacher_path=str(teacher_path), teacher_cache_path=str(cache), optimizer_lr=3e-4
        )
        _, paths["student"], _ = train_policy_on_dataset(
            student_cfg, REPO_ID, root, out / "student", args.student_steps, 64, args.seed, "student", samples
        )
    return paths


def run_robot(policy, preprocessor, postprocessor, rtc: bool, delay: int, args: argparse.Namespace, tag: str) -> dict:
    """One run of `args.scenes` scenes on the robot, chunks produced as LeRobot's RTC engine does (see the module
    docstring), `delay` control periods after their observation."""
    from lerobot.policies.rtc import ActionQueue, RTCConfig
    from lerobot.policies.utils import prepare_observation_for_inference
    from lerobot.robots import make_robot_from_config
    from lerobot.rollout.inference.rtc import _normalize_prev_actions_length
    from lerobot.utils.feature_utils import build_dataset_frame, hw_to_dataset_features

    from lerobot_flowstep.robots.obstacle_sim.config_obstacle_sim import FlowstepObstacleSimConfig

    rtc_config = RTCConfig(execution_horizon=args.execution_horizon)
    policy.config.rtc_config = rtc_config
    policy.init_rtc_processor()
    robot = make_robot_from_config(
        FlowstepObstacleSimConfig(
            id=tag,
            fps=args.fps,
            episode_time_s=args.episode_time_s,
            reset_time_s=args.reset_time_s,
            seed=args.seed,
            calibration_dir=args.output_dir / "calibration",
        )
    )
    hw_features = hw_to_dataset_features(robot.observation_features, "observation")
    robot.connect()
    period = 1.0 / args.fps
    ticks = int(round(args.scenes * (args.episode_time_s + args.reset_time_s) / period))
    queue, pending, scene = ActionQueue(rtc_config), None, -1
    last_action: np.ndarray | None = None
    jumps, steps, inference_s = [], [], []
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    try:
        for tick in range(ticks):
            wait = start + tick * period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            observation = robot.get_observation()
            if robot.scene_index != scene:  # a new scene: what was planned for the last one is dropped
                scene, queue, pending, last_action = robot.scene_index, ActionQueue(rtc_config), None, None
                policy.reset()
            merged = False
            if pending is not None and tick >= pending["ready"]:
                queue.merge(pending["original"], pending["processed"], delay, pending["index"])
                pending, merged = None, True
            if pending is None:
                index, left_over = queue.get_action_index(), queue.get_left_over()
                if left_over is not None:
                    left_over = _normalize_prev_actions_length(left_over, target_steps=rtc_config.execution_horizon)
                frame = build_dataset_frame(hw_features, observation, prefix="observation")
                batch = preprocessor(prepare_observation_for_inference(frame, torch.device("cpu"), "", tag))
                began = time.perf_counter()
                guidance = {"inference_delay": delay, "prev_chunk_left_over": left_over} if rtc else {}
                actions = policy.predict_action_chunk(batch, **guidance)
                inference_s.append(time.perf_counter() - began)
                processed = postprocessor(actions).squeeze(0)
                original = actions.squeeze(0)
                pending = {"ready": tick + delay, "original": original, "processed": processed, "index": index}
            action = queue.get()
            if action is None:
                continue
            action = action.numpy()
            robot.send_action(dict(zip(AGENT_KEYS, action.tolist(), strict=True)))
            if last_action is not None:
                (jumps if merged else steps).append(float(np.linalg.norm(action - last_action)))
            last_action = action
    finally:
        robot.disconnect()
    report = robot.report()
    jumps_a, steps_a = np.asarray(jumps), np.asarray(steps)
    return {
        "rtc": rtc,
        "delay": delay,
        "boundaries": len(jumps),
        "boundary_jump_mean": float(jumps_a.mean()),
        "boundary_jump_p95": float(np.percentile(jumps_a, 95)),
        "step_mean": float(steps_a.mean()),
        "jump_to_step": float(jumps_a.mean() / steps_a.mean()),
        "success_rate": report["success_rate"],
        "scenes": report["scenes"],
        "collisions": report["collisions"],
        "overrun_share": report.get("overrun_share"),
        "inference_ms_p50": float(np.median(inference_s) * 1e3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/rtc_smoothness"))
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument("--episodes", type=int, default=150, help="expert demonstrations to train on")
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--student", action="store_true", help="also distil the student and measure its RTC rule")
    parser.add_argument("--student-steps", type=int, default=1500)
    parser.add_argument("--delays", type=int, nargs="+", default=[3, 6], help="injected delays, in control periods")
    parser.add_argument("--execution-horizon", type=int, default=10, help="--inference.rtc.execution_horizon")
    parser.add_argument("--scenes", type=int, default=12, help="scenes per run")
    # 20 Hz: the teacher's 10 steps, the rendering and the loop fit the period on a loaded 2-core machine.
    parser.add_argument("--fps", type=int, default=20)
    parser.add_argument("--episode-time-s", type=float, default=2.5)
    parser.add_argument("--reset-time-s", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if min(args.delays) < 1:
        parser.error("--delays must be at least 1 control period (a chunk is merged after its observation's tick)")
    torch.set_num_threads(args.threads)
    # The first chunk of a scene finds an empty queue, so no action was executed while it was computed, which
    # LeRobot's ActionQueue warns about at every scene.
    logging.getLogger("lerobot.policies.rtc.action_queue").setLevel(logging.ERROR)
    began = time.perf_counter()
    root = args.output_dir / "data"
    if not root.exists():
        write_demonstrations(root, args.episodes, args.fps, args.seed)
    paths = train(args, root)
    results = []
    for name, path in paths.items():
        policy, pre, post = load_checkpoint(path)
        policy.eval()
        for delay in args.delays:
            for rtc in (False, True):
                row = {"policy": name, **run_robot(policy, pre, post, rtc, delay, args, f"{name}_{delay}_{rtc}")}
                print(json.dumps(row), flush=True)
                results.append(row)
    print(
        "\n| policy | delay (periods) | RTC | boundary jump mean / p95 | step within a chunk | jump / step | "
        "success | overruns |\n|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['policy']} | {r['delay']} | {'yes' if r['rtc'] else 'no'} | {r['boundary_jump_mean']:.4f} / "
            f"{r['boundary_jump_p95']:.4f} | {r['step_mean']:.4f} | {r['jump_to_step']:.2f} | "
            f"{r['success_rate']:.0%} ({r['scenes']} scenes) | {r['overrun_share']:.1%} |"
        )
    report = {
        "command": " ".join(["python", *sys.argv]),
        "results": results,
        "wall_s": round(time.perf_counter() - began, 1),
        "threads": args.threads,
        "cpus": os.cpu_count(),
    }
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
