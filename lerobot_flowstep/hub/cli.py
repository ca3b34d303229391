"""`lerobot-flowstep push` and `lerobot-flowstep push-dataset`: publish checkpoints and datasets on the Hub."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def _push(args: argparse.Namespace) -> None:
    from lerobot_flowstep.hub.publish import push_policy

    upload = _network_errors_as_runtime_errors(
        args.repo_id,
        lambda: push_policy(
            Path(args.checkpoint),
            args.repo_id,
            teacher_repo_id=args.teacher_repo_id,
            report=Path(args.report) if args.report else None,
            dataset_repo_id=args.dataset_repo_id,
            dataset_root=Path(args.dataset_root) if args.dataset_root else None,
            private=args.private,
            commit_message=args.commit_message,
            dry_run=args.dry_run,
        ),
    )
    print(upload.describe())
    if args.dry_run:
        print("Dry run: nothing was created or uploaded.")
    else:
        print(f"Pushed {upload.checkpoint} to https://huggingface.co/{upload.repo_id} ({upload.commit_url})")


def _push_dataset(args: argparse.Namespace) -> None:
    from lerobot_flowstep.hub.datasets import push_dataset

    upload = _network_errors_as_runtime_errors(
        args.repo_id,
        lambda: push_dataset(
            Path(args.root),
            args.repo_id,
            source=args.source,
            license=args.license,
            tags=args.tag,
            private=args.private,
            push_videos=not args.no_videos,
            dry_run=args.dry_run,
        ),
    )
    print(upload.describe())
    if args.dry_run:
        print("Dry run: nothing was created or uploaded.")
    else:
        print(f"Pushed {upload.root} to https://huggingface.co/datasets/{upload.repo_id}")


def _network_errors_as_runtime_errors[T](repo_id: str, push: Callable[[], T]) -> T:
    # The CLI reports RuntimeErrors in one line; a failed Hub call would otherwise end in a traceback.
    import httpx
    from huggingface_hub.errors import LocalTokenNotFoundError

    try:
        return push()
    except (httpx.HTTPError, ConnectionError, LocalTokenNotFoundError) as err:
        raise RuntimeError(f"pushing to {repo_id} failed: {err}") from err


def add_hub_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add `push` and `push-dataset` to the `lerobot-flowstep` subcommands."""
    push = subparsers.add_parser(
        "push",
        help="publish a teacher or student checkpoint on the Hub, with a model card",
        description="Check a checkpoint folder, build the upload (model card README.md, config, weights, "
        "processors) in a temporary folder and upload it with huggingface_hub. A student's upload names its "
        "teacher by repo id and never contains the teacher's weights.",
    )
    push.add_argument("checkpoint", help="a pretrained_model folder (e.g. outputs/train/x/checkpoints/last/...)")
    push.add_argument("repo_id", help="<user or org>/<name> of the model repo to create or update")
    push.add_argument(
        "--teacher-repo-id",
        help="a student's teacher on the Hub (required when the student's teacher_path is a local folder)",
    )
    push.add_argument("--report", help="report.json of the `lerobot-flowstep demo` run that measured this checkpoint")
    push.add_argument("--dataset-repo-id", help="the training dataset's Hub repo id, for the card")
    push.add_argument("--dataset-root", help="a local copy of the training dataset, for the card's data facts")
    push.add_argument("--private", action="store_true", default=None, help="create the repo private")
    push.add_argument("--commit-message")
    push.add_argument("--dry-run", action="store_true", help="print the card and the file list; upload nothing")
    push.set_defaults(func=_push)

    push_ds = subparsers.add_parser(
        "push-dataset",
        help="publish a LeRobotDataset on the Hub (LeRobotDataset.push_to_hub), its card saying where it came from",
    )
    push_ds.add_argument("root", help="the dataset folder (holding meta/info.json)")
    push_ds.add_argument("repo_id", help="<user or org>/<name> of the dataset repo to create or update")
    push_ds.add_argument(
        "--source",
        help="where the data came from (required unless the dataset was written by `lerobot-flowstep generate` "
        "or `convert rlbench`, whose robot type says so)",
    )
    push_ds.add_argument("--license", default="apache-2.0")
    push_ds.add_argument("--tag", action="append", help="an extra card tag (repeatable)")
    push_ds.add_argument("--private", action="store_true", default=None, help="create the repo private")
    push_ds.add_argument("--no-videos", action="store_true", help="leave videos/ out")
    push_ds.add_argument("--dry-run", action="store_true", help="print the card and the file list; upload nothing")
    push_ds.set_defaults(func=_push_dataset)
