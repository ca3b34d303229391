"""`lerobot-flowstep`: the project's command line (LeRobot's own commands do training and evaluation)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lerobot_flowstep.core.flow_matching import SOLVERS
from lerobot_flowstep.datasets.features import add_storage_arguments
from lerobot_flowstep.datasets.zarr_cli import add_convert_zarr_parser
from lerobot_flowstep.hub.cli import add_hub_parsers
from lerobot_flowstep.metaworld.cli import add_generate_metaworld_parser
from lerobot_flowstep.rlbench.cli import add_convert_rlbench_parser


def _generate(args: argparse.Namespace) -> None:
    from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset

    root = generate_obstacle_dataset(
        Path(args.output),
        repo_id=args.repo_id,
        num_episodes=args.episodes,
        num_modes=args.num_modes,
        camera=args.camera,
        image_size=args.image_size,
        seed=args.seed,
        overwrite=args.overwrite,
        depth_storage=args.depth_storage,
        rgb_storage=args.rgb_storage,
    )
    print(f"Wrote {root} (load it with LeRobotDataset('{args.repo_id}', root='{root}')).")


def _demo(args: argparse.Namespace) -> None:
    from lerobot_flowstep.tools.demo import DemoSettings, run_demo

    run_demo(
        DemoSettings(
            output_dir=Path(args.output_dir),
            num_modes=args.num_modes,
            num_episodes=args.episodes,
            teacher_steps=args.teacher_steps,
            student_steps=args.student_steps,
            regression_steps=args.regression_steps,
            eval_episodes=args.eval_episodes,
            seed=args.seed,
            threads=args.threads,
        )
    )


def _cache_teacher(args: argparse.Namespace) -> None:
    from lerobot_flowstep.tools.cache_teacher import build_teacher_cache

    path = build_teacher_cache(
        args.teacher_path,
        args.dataset_repo_id,
        Path(args.dataset_root),
        Path(args.output),
        num_samples=args.num_samples,
        num_steps=args.num_steps,
        solver=args.solver,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        shard_size=args.shard_size or None,
        resume=args.resume,
        plan_batches=args.plan,
        observation_noise_std=args.observation_noise_std,
    )
    if args.plan:
        return
    if args.observation_noise_std > 0:
        print(
            f"Wrote {path}; train with --policy.perturbed_cache_path={path} "
            f"--policy.observation_noise_std={args.observation_noise_std}"
        )
    else:
        print(f"Wrote {path}; train with --policy.teacher_cache_path={path}")


def _calibrate(args: argparse.Namespace) -> None:
    from lerobot_flowstep.datasets.calibration import calibrate_dataset

    path = calibrate_dataset(
        Path(args.dataset_root),
        args.camera,
        intrinsics=args.intrinsics,
        extrinsics=args.extrinsics,
        calibration_file=Path(args.calibration_file) if args.calibration_file else None,
    )
    print(f"Wrote the calibration of camera '{args.camera}' into {path}.")


def _diagnose(args: argparse.Namespace) -> None:
    from lerobot_flowstep.tools.diagnostics import held_out_chamfer, rollout_mode_report

    report: dict = {}
    if args.dataset_repo_id:
        episodes = [int(e) for e in args.episodes.split(",")]
        report["chamfer_vs_teacher"] = held_out_chamfer(
            args.policy_path, args.teacher_path, args.dataset_repo_id, args.dataset_root, episodes,
            args.num_frames, args.num_samples, args.teacher_num_steps, args.teacher_solver, args.seed,
        )  # fmt: skip
    if args.rollouts:
        from lerobot_flowstep.tools.checkpoints import load_checkpoint

        policy, pre, post = load_checkpoint(Path(args.policy_path))
        stats, _ = rollout_mode_report(policy, pre, post, args.num_modes, args.rollouts, args.seed + 100_000)
        report["embedded_task_rollouts"] = stats.as_dict()
    if not report:
        raise ValueError("Nothing to do: give --dataset-repo-id (sample diagnostics) and/or --rollouts N.")
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))


def _config(args: argparse.Namespace) -> None:
    from lerobot_flowstep.tools.configs import config_names, config_path, write_all_configs, write_config

    if args.action == "list":
        print("\n".join(config_names()))
    elif args.action == "path":
        print(config_path(args.name))
    elif args.all == bool(args.name):
        raise ValueError("config write takes one config name or --all, not both or neither.")
    elif args.all:
        written = write_all_configs(Path(args.output), overwrite=args.overwrite)
        print(f"Wrote {len(written)} configs under {args.output}.")
    else:
        print(f"Wrote {write_config(args.name, Path(args.output), overwrite=args.overwrite)}")


def _serve(args: argparse.Namespace, options: list[str]) -> None:
    import draccus

    from lerobot_flowstep.serving.server import FlowstepPolicyServerConfig, serve

    serve(draccus.parse(FlowstepPolicyServerConfig, args=options))


def _robot_client(args: argparse.Namespace, options: list[str]) -> None:
    import draccus

    from lerobot_flowstep.serving.client import FlowstepRobotClientConfig, run_robot_client

    summary = run_robot_client(draccus.parse(FlowstepRobotClientConfig, args=options))
    print(json.dumps(summary))


# Subcommands that take LeRobot's own options (draccus, `--name=value`), passed through unparsed.
_LEROBOT_OPTIONS = {"serve", "robot-client"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lerobot-flowstep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write expert demonstrations of the embedded obstacle task")
    gen.add_argument("--output", required=True, help="dataset folder to create")
    gen.add_argument("--repo-id", default="local/flowstep_obstacle")
    gen.add_argument("--episodes", type=int, default=200)
    gen.add_argument("--num-modes", type=int, default=2, choices=(2, 4))
    gen.add_argument("--camera", action="store_true", help="also record the RGB-D camera, calibrated")
    gen.add_argument("--image-size", type=int, default=64)
    add_storage_arguments(gen)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(func=_generate)

    add_generate_metaworld_parser(sub)

    convert = sub.add_parser("convert", help="third-party demonstrations -> LeRobotDataset v3")
    convert_sub = convert.add_subparsers(dest="format", required=True)
    add_convert_rlbench_parser(convert_sub)
    add_convert_zarr_parser(convert_sub)

    cache = sub.add_parser("cache-teacher", help="draw teacher samples once per dataset frame for distillation")
    cache.add_argument("--teacher-path", required=True)
    cache.add_argument("--dataset-repo-id", required=True)
    cache.add_argument("--dataset-root", required=True)
    cache.add_argument("--output", required=True, help="a .safetensors file to create")
    cache.add_argument("--num-samples", type=int, default=16)
    cache.add_argument("--num-steps", type=int, default=20)
    cache.add_argument("--solver", default="heun", choices=SOLVERS)
    cache.add_argument("--batch-size", type=int, default=256)
    cache.add_argument("--device", default="cpu")
    cache.add_argument("--seed", type=int, default=0)
    cache.add_argument(
        "--shard-size",
        type=int,
        default=1024,
        help="frames per shard: each is written as soon as it is drawn (beside --output, in OUTPUT.shards/), so a "
        "killed job loses at most one shard; 0: one shard",
    )
    cache.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted job with the same settings, or join one that another process is drawing "
        "(run the command twice to use two cores); the last process to finish writes --output",
    )
    cache.add_argument(
        "--plan",
        type=int,
        default=0,
        metavar="BATCHES",
        help="write nothing: time this many batches (after a warm-up one) and print the cost per frame and the "
        "whole job's ETA on one and two processes",
    )
    cache.add_argument(
        "--observation-noise-std",
        type=float,
        default=0.0,
        help="draw a perturbed cache: each sample at its own copy of its frame's state-like observations offset by "
        "Gaussian noise of this std (normalized units), for --policy.perturbed_cache_path; 0: at the frames",
    )
    cache.set_defaults(func=_cache_teacher)

    calib = sub.add_parser(
        "calibrate",
        help="write a depth camera's intrinsics and camera-to-world extrinsics into a LeRobotDataset's meta/info.json",
    )
    calib.add_argument("--dataset-root", required=True)
    calib.add_argument("--camera", required=True, help="the camera of the depth map observation.images.<cam>_depth")
    calib.add_argument("--intrinsics", type=float, nargs=9, metavar="K", help="3x3 pinhole matrix, row-major (OpenCV)")
    calib.add_argument(
        "--extrinsics", type=float, nargs=16, metavar="T", help="4x4 camera-to-world transform, row-major, OpenCV axes"
    )
    calib.add_argument(
        "--calibration-file",
        help="ROS camera_info YAML, OpenCV FileStorage YAML/XML, or JSON (intrinsics, camera_to_world)",
    )
    calib.set_defaults(func=_calibrate)

    diag = sub.add_parser("diagnose", help="Chamfer coverage/fidelity against the teacher; modes on the embedded task")
    diag.add_argument("--policy-path", required=True)
    diag.add_argument("--teacher-path", help="teacher checkpoint the samples are compared with")
    diag.add_argument("--dataset-repo-id")
    diag.add_argument("--dataset-root")
    diag.add_argument("--episodes", default="0", help="comma-separated held-out episode indices")
    diag.add_argument("--num-frames", type=int, default=128)
    diag.add_argument("--num-samples", type=int, default=32)
    diag.add_argument("--teacher-num-steps", type=int)
    diag.add_argument("--teacher-solver", choices=SOLVERS)
    diag.add_argument("--rollouts", type=int, default=0, help="episodes on the embedded flowstep_obstacle task")
    diag.add_argument("--num-modes", type=int, default=2, choices=(2, 4))
    diag.add_argument("--seed", type=int, default=0)
    diag.add_argument("--output", help="also write the JSON report here")
    diag.set_defaults(func=_diagnose)

    demo = sub.add_parser(
        "demo", help="the whole method on the embedded task: data, teacher, student, baselines, table, picture"
    )
    demo.add_argument("--output-dir", default="outputs/demo")
    demo.add_argument("--num-modes", type=int, default=2, choices=(2, 4))
    demo.add_argument("--episodes", type=int, default=200)
    demo.add_argument("--teacher-steps", type=int, default=2000)
    demo.add_argument("--student-steps", type=int, default=1500)
    demo.add_argument("--regression-steps", type=int, default=1000)
    demo.add_argument("--eval-episodes", type=int, default=200)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    demo.set_defaults(func=_demo)

    add_hub_parsers(sub)

    sub.add_parser(
        "serve",
        help="LeRobot's async-inference PolicyServer, serving this plugin's policies too (LeRobot's options: --host, "
        "--port, --fps, --inference_latency, --obs_queue_timeout; and --observation_similarity_atol)",
    ).set_defaults(func=_serve)
    sub.add_parser(
        "robot-client",
        help="LeRobot's async-inference RobotClient, stopping the robot with an error when the server refuses or "
        "fails (LeRobot's options: --robot.type, --server_address, --policy_type, --pretrained_name_or_path, "
        "--actions_per_chunk, ...; and --duration_s, --summary_path)",
    ).set_defaults(func=_robot_client)

    config = sub.add_parser(
        "config", help="the shipped lerobot-train configs (configs/ of the repository): list, path, write"
    )
    config_sub = config.add_subparsers(dest="action", required=True)
    config_sub.add_parser("list", help="every shipped config name (<group>/<name>)").set_defaults(func=_config)
    path = config_sub.add_parser(
        "path", help="the installed file, for --config_path=$(lerobot-flowstep config path ...)"
    )
    path.add_argument("name", help="e.g. pusht/teacher")
    path.set_defaults(func=_config)
    write = config_sub.add_parser("write", help="copy one config, or all of them as configs/<group>/<name>.json")
    write.add_argument("name", nargs="?", help="e.g. pusht/teacher_unet")
    write.add_argument("--all", action="store_true", help="every config, under --output as <group>/<name>.json")
    write.add_argument("--output", required=True, help="the .json file (or, with --all, the folder) to write")
    write.add_argument("--overwrite", action="store_true")
    write.set_defaults(func=_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, options = parser.parse_known_args(argv)
    if options and args.command not in _LEROBOT_OPTIONS:
        parser.error(f"unrecognized arguments: {' '.join(options)}")
    try:
        if args.command in _LEROBOT_OPTIONS:
            args.func(args, options)
        else:
            args.func(args)
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        print(f"lerobot-flowstep {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
