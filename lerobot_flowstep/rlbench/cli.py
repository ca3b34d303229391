"""`lerobot-flowstep convert rlbench`: RLBench demos (one task folder) -> LeRobotDataset v3."""

from __future__ import annotations

import argparse
from pathlib import Path

from lerobot_flowstep.datasets.features import add_storage_arguments
from lerobot_flowstep.processor.pointcloud import PointCloudConfig
from lerobot_flowstep.rlbench.conventions import (
    ACTION_MODES,
    DEFAULT_BOUNDS_HIGH,
    DEFAULT_BOUNDS_LOW,
    RLBENCH_CAMERAS,
    RLBENCH_MOVING_CAMERAS,
)
from lerobot_flowstep.rlbench.converter import convert_rlbench
from lerobot_flowstep.rlbench.demo_files import discover_episodes
from lerobot_flowstep.rlbench.geometry_check import check_rlbench_geometry

_EPILOG = (
    "layouts read: <task>/variation<N>/episodes/episode<K>/ and <task>/all_variations/episodes/episode<K>/\n\n"
    "examples:\n"
    "  lerobot-flowstep convert rlbench --input data/rlbench/open_box --output data/lerobot/rlbench_open_box\n"
    "  lerobot-flowstep convert rlbench --input data/rlbench/open_box --output data/lerobot/open_box_kf \\\n"
    "      --cameras front,left_shoulder,right_shoulder,wrist --keyframes --pointcloud --num-points 1024 \\\n"
    "      --check-geometry --skip-bad-episodes"
)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _convert_rlbench(args: argparse.Namespace) -> None:
    cameras = _names(args.cameras)
    if args.check_geometry:
        _, episodes = discover_episodes(Path(args.input))
        report = check_rlbench_geometry(episodes[0].path, cameras=cameras)
        print(report.format())
        if not report.passed:
            raise ValueError(f"geometry check failed on {episodes[0].name}; not converting (see above)")
    pointcloud = None
    if args.pointcloud:
        pointcloud = PointCloudConfig(
            cameras=_names(args.pointcloud_cameras) if args.pointcloud_cameras else list(cameras),
            num_points=args.num_points,
            use_rgb=args.pointcloud_rgb,
            bounds_low=list(args.bounds_low),
            bounds_high=list(args.bounds_high),
            voxel_size=args.voxel_size,
        )
    summary = convert_rlbench(
        Path(args.input),
        Path(args.output),
        repo_id=args.repo_id,
        cameras=cameras,
        action_mode=args.action,
        keyframes_only=args.keyframes,
        pointcloud=pointcloud,
        variations=[int(v) for v in _names(args.variations)] if args.variations else None,
        max_episodes=args.episodes,
        skip_bad_episodes=args.skip_bad_episodes,
        overwrite=args.overwrite,
        image_writer_threads=args.image_writer_threads,
        moving_cameras=_names(args.moving_cameras),
        depth_storage=args.depth_storage,
        rgb_storage=args.rgb_storage,
    )
    print(summary.format())
    print(f"Load it with LeRobotDataset('{summary.repo_id}', root='{summary.root}').")


def add_convert_rlbench_parser(convert_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `rlbench` converter to the `convert` subcommand's subparsers; returns its parser."""
    parser = convert_subparsers.add_parser(
        "rlbench",
        help="RLBench demos (RGB, depth, camera parameters, optional point clouds) -> LeRobotDataset v3",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="task folder (or one of its variation folders)")
    parser.add_argument("--output", required=True, help="dataset folder to create (built beside it, then renamed)")
    parser.add_argument("--repo-id", default=None, help="dataset id in the metadata (default: local/rlbench_<task>)")
    parser.add_argument(
        "--cameras", default=",".join(RLBENCH_CAMERAS), help="comma-separated cameras to convert (default: all five)"
    )
    parser.add_argument(
        "--action",
        default="ee_pose",
        choices=ACTION_MODES,
        help="ee_pose: next gripper pose + gripper open; joint_positions: next joint positions + gripper open",
    )
    parser.add_argument("--keyframes", action="store_true", help="keep only keyframes (gripper change or arm at rest)")
    parser.add_argument(
        "--pointcloud",
        action="store_true",
        help="also store the fused world-frame point cloud (LeRobot's reader formats it with every row a sample "
        "reads, which slows lerobot-train; without it the policy's step makes the cloud from depth)",
    )
    parser.add_argument("--pointcloud-cameras", default=None, help="cameras fused into it (default: --cameras)")
    parser.add_argument("--num-points", type=int, default=1024, help="farthest-point-sampled cloud size")
    parser.add_argument("--pointcloud-rgb", action="store_true", help="append each point's colour in [0, 1]")
    parser.add_argument(
        "--voxel-size", type=float, default=None, help="voxel side (m) before sampling; as the policy's pointcloud"
    )
    parser.add_argument("--bounds-low", type=float, nargs=3, default=DEFAULT_BOUNDS_LOW, metavar=("X", "Y", "Z"))
    parser.add_argument("--bounds-high", type=float, nargs=3, default=DEFAULT_BOUNDS_HIGH, metavar=("X", "Y", "Z"))
    parser.add_argument("--variations", default=None, help="comma-separated variation numbers to keep (default: all)")
    parser.add_argument("--episodes", type=int, default=None, help="convert at most N episodes")
    parser.add_argument(
        "--skip-bad-episodes",
        action="store_true",
        help="leave out an episode with bad files and report it, instead of stopping at the first",
    )
    parser.add_argument(
        "--check-geometry",
        action="store_true",
        help="first check that the cameras agree on the table plane and overlap (first episode, frame 0)",
    )
    parser.add_argument(
        "--moving-cameras",
        default=",".join(RLBENCH_MOVING_CAMERAS),
        help="cameras whose parameters are stored per frame (default: wrist); the others' go into the dataset's "
        "info once, and every frame must match them",
    )
    add_storage_arguments(parser)
    parser.add_argument("--image-writer-threads", type=int, default=0, help="threads writing PNGs (0: inline)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(func=_convert_rlbench)
    return parser
