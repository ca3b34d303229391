"""`lerobot-flowstep`: the project's command line (LeRobot's own commands do training and evaluation)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _generate(args: argparse.Namespace) -> None:
    from .datasets.obstacle_dataset import generate_obstacle_dataset

    root = generate_obstacle_dataset(
        Path(args.output),
        repo_id=args.repo_id,
        num_episodes=args.episodes,
        num_modes=args.num_modes,
        camera=args.camera,
        image_size=args.image_size,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(f"Wrote {root} (load it with LeRobotDataset('{args.repo_id}', root='{root}')).")


def _demo(args: argparse.Namespace) -> None:
    from .demo import DemoSettings, run_demo

    run_demo(
        DemoSettings(
            output_dir=Path(args.output_dir),
            num_modes=args.num_modes,
            num_episodes=args.episodes,
            teacher_steps=args.teacher_steps,
            eval_episodes=args.eval_episodes,
            seed=args.seed,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lerobot-flowstep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write expert demonstrations of the embedded obstacle task")
    gen.add_argument("--output", required=True, help="dataset folder to create")
    gen.add_argument("--repo-id", default="local/flowstep_obstacle")
    gen.add_argument("--episodes", type=int, default=200)
    gen.add_argument("--num-modes", type=int, default=2, choices=(2, 4))
    gen.add_argument("--camera", action="store_true", help="also record RGB, depth and camera parameters")
    gen.add_argument("--image-size", type=int, default=64)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(func=_generate)

    demo = sub.add_parser("demo", help="dataset -> lerobot-train -> lerobot-eval on the embedded task")
    demo.add_argument("--output-dir", default="outputs/demo")
    demo.add_argument("--num-modes", type=int, default=2, choices=(2, 4))
    demo.add_argument("--episodes", type=int, default=200)
    demo.add_argument("--teacher-steps", type=int, default=2000)
    demo.add_argument("--eval-episodes", type=int, default=50)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"lerobot-flowstep {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
