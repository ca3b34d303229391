"""`lerobot-flowstep convert zarr`: Diffusion Policy / DP3 zarr replay buffer -> LeRobotDataset v3."""

from __future__ import annotations

import argparse
from pathlib import Path

from lerobot_flowstep.datasets.zarr import MAPPING_PRESETS, convert_zarr

_EPILOG = (
    "mapping presets:\n"
    + "\n".join(f"  {p.name}: {p.description}" for p in MAPPING_PRESETS.values())
    + (
        "\n\nexamples:\n"
        "  lerobot-flowstep convert zarr --input pusht_cchi_v7_replay.zarr --output data/pusht --mapping pusht\n"
        "  lerobot-flowstep convert zarr --input pusht_cchi_v7_replay.zarr --output data/pusht_kp "
        "--mapping pusht_keypoints --map data/img=observation.image\n"
        "  lerobot-flowstep convert zarr --input metaworld_reach.zarr --output data/reach --fps 10 --task 'reach' \\\n"
        "      --map 'data/point_cloud[:3]=observation.pointcloud' --map data/state=observation.state "
        "--map data/action=action"
    )
)


def _convert_zarr(args: argparse.Namespace) -> None:
    summary = convert_zarr(
        Path(args.input),
        Path(args.output),
        mapping=args.mapping,
        extra_mappings=args.map or (),
        repo_id=args.repo_id,
        fps=args.fps,
        task=args.task,
        robot_type=args.robot_type,
        max_episodes=args.episodes,
        video=args.video,
        image_writer_threads=args.image_writer_threads,
        overwrite=args.overwrite,
        drop_nonfinite_episodes=args.drop_nonfinite_episodes,
    )
    print(summary.describe())


def add_convert_zarr_parser(convert_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `zarr` converter to the `convert` subcommand's subparsers; returns its parser."""
    parser = convert_subparsers.add_parser(
        "zarr",
        help="Diffusion Policy / DP3 zarr replay buffer -> LeRobotDataset v3",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="zarr store: a .zarr folder or a zipped store")
    parser.add_argument("--output", required=True, help="dataset folder to create (built beside it, then renamed)")
    # Not argparse choices: convert_zarr reports an unknown preset with the known ones, like other bad input.
    parser.add_argument("--mapping", default=None, help=f"mapping preset: {', '.join(MAPPING_PRESETS)}")
    parser.add_argument(
        "--map",
        action="append",
        metavar="data/ARRAY[START:STOP]=KEY",
        help="map a zarr array (optionally columns of its last axis) to a LeRobot key; repeatable, "
        "added to the preset's and replacing a preset entry with the same key",
    )
    parser.add_argument("--repo-id", default=None, help="dataset id in the metadata (default: local/<store name>)")
    parser.add_argument("--fps", type=int, default=None, help="frame rate (default: the preset's; else required)")
    parser.add_argument("--task", default=None, help="task description (default: the preset's; else required)")
    parser.add_argument("--robot-type", default=None, help="robot type in the metadata (default: the preset's)")
    parser.add_argument("--episodes", type=int, default=None, help="convert only the first N episodes")
    parser.add_argument("--video", action="store_true", help="store images as video instead of lossless PNG")
    parser.add_argument("--image-writer-threads", type=int, default=0, help="threads writing PNGs (0: inline)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--drop-nonfinite-episodes",
        action="store_true",
        help="leave out episodes holding NaN or inf (default: refuse the store, naming array, episode and frame)",
    )
    parser.set_defaults(func=_convert_zarr)
    return parser
