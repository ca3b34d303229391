"""`lerobot-flowstep generate-metaworld`: MetaWorld expert demonstrations -> LeRobotDataset v3."""

from __future__ import annotations

import argparse
from pathlib import Path

from lerobot_flowstep.datasets.features import add_storage_arguments
from lerobot_flowstep.metaworld.env import DEFAULT_CAMERAS


def _generate_metaworld(args: argparse.Namespace) -> None:
    from lerobot_flowstep.metaworld.demos import generate_metaworld_dataset, metaworld_pointcloud_config

    pointcloud = None
    if args.pointcloud:
        pointcloud = metaworld_pointcloud_config(args.pointcloud_cameras or args.cameras, args.num_points)
    root = generate_metaworld_dataset(
        Path(args.output),
        args.task,
        repo_id=args.repo_id,
        num_episodes=args.episodes,
        cameras=args.cameras,
        image_size=args.image_size,
        max_steps=args.max_steps,
        pointcloud=pointcloud,
        seed=args.seed,
        overwrite=args.overwrite,
        depth_storage=args.depth_storage,
        rgb_storage=args.rgb_storage,
    )
    print(f"Wrote {root}.")


def add_generate_metaworld_parser(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser(
        "generate-metaworld",
        help="write MetaWorld expert demonstrations (RGB-D, camera parameters, optional point cloud)",
        description="Roll MetaWorld's scripted expert, one seed per episode, keep the successful episodes and "
        "write them as a LeRobotDataset v3 (needs the `metaworld` extra).",
    )
    gen.add_argument("--task", required=True, help="MetaWorld task, e.g. push-v3")
    gen.add_argument("--output", required=True, help="dataset folder to create")
    gen.add_argument("--repo-id", help="default: local/metaworld_<task>")
    gen.add_argument("--episodes", type=int, default=10, help="successful episodes to keep (DP3 uses 10)")
    gen.add_argument("--cameras", nargs="+", default=list(DEFAULT_CAMERAS))
    gen.add_argument("--image-size", type=int, default=128)
    gen.add_argument("--max-steps", type=int, default=200, help="an expert episode longer than this is a failure")
    gen.add_argument(
        "--pointcloud",
        action="store_true",
        help="also store observation.pointcloud (for in-memory training; it makes lerobot-train's reader about 8x "
        "slower, since LeRobot formats it with every row a sample reads: without it the policy's step makes the "
        "cloud from depth)",
    )
    gen.add_argument("--pointcloud-cameras", nargs="+", help="cameras fused into the cloud (default: --cameras)")
    gen.add_argument("--num-points", type=int, default=512)
    add_storage_arguments(gen)
    gen.add_argument("--seed", type=int, default=0, help="seed of the first episode; the next ones count up")
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(func=_generate_metaworld)
