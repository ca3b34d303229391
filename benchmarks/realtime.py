"""Real time in LeRobot's own loop: `lerobot-rollout` of each policy on the simulated RGB-D robot.

For each size, the robot records demonstrations with `lerobot-record` and its scripted operator, LeRobot's commands
train the teacher, its cache and the student (and LeRobot's `diffusion` on RGB + state), and `lerobot-rollout
--strategy.type=base` runs each policy on the robot for `--duration` seconds. The robot's report gives, per
policy:
- the control rate achieved against the robot's `fps`, and the share of actions later than the period;
- the time from each observation to its action, p50 and p99: what LeRobot's loop spends on pre-processing, the
  policy and post-processing. Most steps pop a queued action; a re-plan is the slow one, so p99 is a re-plan's
  cost as the loop sees it when re-plans are at least 1 % of the steps;
- the scenes and successes (meaningful only with policies trained long enough: `--train-steps`).
The teacher runs twice: under `--inference.type=sync` (LeRobot's `select_action` loop) and under LeRobot's RTC
engine (`--rtc-args`), which computes the next chunk in a background thread while the robot executes.

Sizes: `sim` is the robot's own camera (64 px; the flowstep policies on point cloud + state, as README's
workflow), `rlbench` is RLBench's (4 cameras at 128 px: the camera and 3 load-test views; RGB + point cloud +
state, ResNet-18 per image and a 1,024-point cloud). Cost does not depend on what the weights learned, so the
timing rows need only a few training steps.

Each stage is skipped when its output exists, so a killed run resumes; `--force` redoes the rollouts.

    OMP_NUM_THREADS=1 uv run python benchmarks/realtime.py --output outputs/realtime --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

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
from lerobot_flowstep.tools.timings import write_text_atomic

REPO_ID = "local/obstacle_sim"
TASK = "Move the agent to the goal"
BOUNDS = ["--policy.pointcloud.bounds_low=[-1.2,-1.2,-0.05]", "--policy.pointcloud.bounds_high=[1.2,1.2,0.5]"]


@dataclass(frozen=True)
class Size:
    image_size: int
    extra_cameras: int
    rgb: bool  # the flowstep policies also see RGB (diffusion always does)
    num_points: int

    @property
    def cameras(self) -> list[str]:
        return ["top", *(f"top_{i}" for i in range(2, self.extra_cameras + 2))]

    def robot_args(self) -> list[str]:
        return [f"--robot.image_size={self.image_size}", f"--robot.extra_cameras={self.extra_cameras}"]


SIZES = {
    "sim": Size(image_size=64, extra_cameras=0, rgb=False, num_points=256),
    "rlbench": Size(image_size=128, extra_cameras=3, rgb=True, num_points=1024),
}


def input_features(size: Size, depth: bool, rgb: bool) -> str:
    s = size.image_size
    features = {"observation.state": {"type": "STATE", "shape": [4]}}
    for camera in size.cameras:
        if rgb:
            features[f"observation.images.{camera}"] = {"type": "VISUAL", "shape": [3, s, s]}
        if depth:
            features[f"observation.images.{camera}_depth"] = {"type": "VISUAL", "shape": [1, s, s]}
    return f"--policy.input_features={json.dumps(features)}"


def record(size: Size, out: Path, args: argparse.Namespace) -> Path:
    root = out / "data"
    if (root / "meta" / "info.json").exists():
        return root
    calibration = out / "calibration"
    lerobot_record(
        [
            *obstacle_sim_args(args.fps, args.episode_time_s, args.reset_time_s, calibration, out / "record.json"),
            *size.robot_args(),
            "--teleop.type=flowstep_obstacle_expert",
            *record_dataset_args(REPO_ID, root, args.fps, args.episode_time_s, args.reset_time_s, args.episodes, TASK),
        ],
        out / "record.log",
    )
    for camera in size.cameras:
        calibration_file = calibration / f"flowstep_obstacle_sim_{camera}_camera.json"
        code = flowstep_cli(
            ["calibrate", "--dataset-root", str(root), "--camera", camera, "--calibration-file", str(calibration_file)]
        )
        if code != 0:
            raise RuntimeError(f"lerobot-flowstep calibrate failed for camera {camera}")
    return root


def train(policy_type: str, root: Path, run_dir: Path, steps: int, extra: list[str]) -> Path:
    if not (run_dir / "checkpoints" / "last" / "pretrained_model").is_dir():
        lerobot_train(
            [*train_args(policy_type, REPO_ID, root, run_dir, steps, 32), *extra],
            run_dir.with_suffix(".log"),
            total_steps=steps,
            desc=run_dir.name,
        )
    return last_checkpoint(run_dir)


def policies(size: Size, root: Path, out: Path, args: argparse.Namespace) -> dict[str, tuple[Path, list[str]]]:
    """{row name: (checkpoint, extra lerobot-rollout arguments)}."""
    flowstep = [
        input_features(size, depth=True, rgb=size.rgb),
        f"--policy.pointcloud.cameras=[{','.join(size.cameras)}]",
        f"--policy.pointcloud.num_points={size.num_points}",
        *BOUNDS,
        "--policy.optimizer_lr=1e-3",
    ]
    teacher = train("flowstep_teacher", root, out / "teacher", args.train_steps, flowstep)
    cache = out / "teacher_samples.safetensors"
    if not cache.exists():
        build_teacher_cache(str(teacher), REPO_ID, root, cache, num_samples=16, num_steps=10, solver="euler")
    student_args = [f"--policy.teacher_path={teacher}", f"--policy.teacher_cache_path={cache}"]
    student = train("imle_student", root, out / "student", args.student_steps or args.train_steps, student_args)
    crop = int(size.image_size * 7 / 8)
    # The flowstep policies' horizon and re-planning period, and the U-Net of benchmarks/latency.py: LeRobot's
    # defaults (horizon 64, down_dims up to 2,048) take seconds per chunk on a CPU.
    diffusion_args = [
        input_features(size, depth=False, rgb=True),
        "--policy.n_obs_steps=2",
        "--policy.horizon=16",
        "--policy.n_action_steps=8",
        "--policy.down_dims=[128,256,512]",
        "--policy.noise_scheduler_type=DDIM",
        "--policy.num_inference_steps=10",
        f"--policy.crop_shape=[{crop},{crop}]",
        "--policy.pretrained_backbone_weights=null",
    ]
    diffusion = train("diffusion", root, out / "diffusion", args.train_steps, diffusion_args)
    rows = {
        "student (16 candidates)": (student, []),
        "teacher (10 Euler steps)": (teacher, ["--policy.num_inference_steps=10"]),
        "diffusion (DDIM-10)": (diffusion, []),
    }
    rows["teacher (10 Euler steps), RTC"] = (teacher, ["--policy.num_inference_steps=10", *args.rtc_args])
    return rows


def rollout(name: str, checkpoint: Path, extra: list[str], size: Size, out: Path, args: argparse.Namespace) -> dict:
    slug = name.split(" ")[0] + ("_rtc" if "RTC" in name else "")
    report_path = out / f"rollout_{slug}.json"
    if args.force or not report_path.exists():
        lerobot_rollout(
            [
                "--strategy.type=base",
                f"--policy.path={checkpoint}",
                "--policy.device=cpu",
                *extra,
                *obstacle_sim_args(args.fps, args.episode_time_s, args.reset_time_s, out / "calibration", report_path),
                *size.robot_args(),
                f"--fps={args.fps}",
                f"--duration={args.duration}",
                "--return_to_initial_position=false",
                "--play_sounds=false",
                f"--task={TASK}",
            ],
            out / f"rollout_{slug}.log",
        )
    return json.loads(report_path.read_text())


def markdown(results: dict[str, dict[str, dict]], args: argparse.Namespace) -> str:
    lines = [
        f"| size | policy | achieved rate (Hz, of {args.fps}) | late actions | observation to action p50 / p99 (ms) "
        "| scenes won |",
        "|---|---|---|---|---|---|",
    ]
    for size, rows in results.items():
        for name, r in rows.items():
            lines.append(
                f"| {size} | {name} | {r.get('achieved_hz', float('nan')):.1f} | {r.get('overrun_share', 0):.1%} "
                f"| {r.get('decision_p50_ms', float('nan')):.1f} / {r.get('decision_p99_ms', float('nan')):.1f} "
                f"| {r['successes']} / {r['scenes']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("outputs/realtime"))
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["sim", "rlbench"])
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--episodes", type=int, default=4, help="demonstrations recorded per size")
    parser.add_argument("--episode-time-s", type=float, default=2.0)
    parser.add_argument("--reset-time-s", type=float, default=0.5)
    parser.add_argument("--train-steps", type=int, default=20, help="teacher and diffusion steps (timing: a few)")
    parser.add_argument("--student-steps", type=int, help="student steps (default: --train-steps)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each rollout")
    # The engine re-plans whenever its queue holds at most queue_threshold actions; LeRobot's default (30) exceeds
    # these chunks and re-plans continuously. 8: as often as the sync rows (n_action_steps).
    parser.add_argument(
        "--rtc-args",
        nargs="+",
        default=["--inference.type=rtc", "--inference.queue_threshold=8"],
        help="lerobot-rollout arguments of the teacher's RTC row",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="redo the rollouts (not the recording and training)")
    args = parser.parse_args()
    # The LeRobot commands run as subprocesses, which inherit these.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)

    results: dict[str, dict[str, dict]] = {}
    for size_name in args.sizes:
        size, out = SIZES[size_name], args.output / size_name
        root = record(size, out, args)
        rows = policies(size, root, out, args)
        results[size_name] = {name: rollout(name, ckpt, extra, size, out, args) for name, (ckpt, extra) in rows.items()}
        table = markdown(results, args)
        report = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": platform.processor()}
        write_text_atomic(args.output / "realtime.json", json.dumps(report | {"results": results}, indent=2))
        print(table, flush=True)


if __name__ == "__main__":
    main()
