"""Publishing a LeRobotDataset on the Hub with LeRobot's own `LeRobotDataset.push_to_hub`, its card (LeRobot's
template, the description from `hub_cards/dataset.md`) saying where the data came from. As for policies, the
card and the file list are built and checked before the first network call, and `dry_run` stops there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

from lerobot_flowstep.datasets.video import video_backend
from lerobot_flowstep.hub.checkpoint import check_repo_id
from lerobot_flowstep.hub.publish import UploadFile, human_size, require_online
from lerobot_flowstep.hub.templates import DATASET_TEMPLATE, format_shape, render_template, table_cell

# Datasets whose origin the robot type alone determines: they are written only by this project's own
# generator and converter. Anything else needs an explicit `source`.
DATASET_PRODUCERS = {
    "flowstep_obstacle": (
        "Simulated expert demonstrations of ObstacleReach, the embedded 2-D reaching task of the "
        "`lerobot_policy_flowstep` plugin, written by its scripted expert with `lerobot-flowstep generate`. The "
        "expert passes each obstacle on a randomly chosen side, so the demonstrations are multi-modal by "
        "construction."
    ),
    "rlbench_panda": (
        "RLBench demonstrations (a simulated Franka Panda in CoppeliaSim) converted to LeRobotDataset v3 by "
        "`lerobot-flowstep convert rlbench`; depth is decoded to metres and camera parameters are rewritten to "
        "the OpenCV convention."
    ),
}
# The index columns every LeRobotDataset has: not features worth a row in the card's table.
_INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def dataset_provenance(meta: LeRobotDatasetMetadata, source: str | None) -> str:
    """Where the data came from: this project's generator or converter, known from the robot type it writes,
    and/or what the user says; an error when neither tells."""
    known = DATASET_PRODUCERS.get(meta.robot_type or "")
    if known is not None:
        return known
    if source:
        return source
    raise ValueError(
        f"Cannot tell where the dataset at {meta.root} came from (robot_type {meta.robot_type!r} is not one this "
        "project's generator or RLBench converter writes). Say it with --source, e.g. --source \"PushT "
        "demonstrations of Diffusion Policy (pusht_cchi_v7_replay.zarr), converted with lerobot-flowstep convert "
        'zarr --preset pusht"; the dataset card must say where the data came from.'
    )


def dataset_card_kwargs(meta: LeRobotDatasetMetadata, repo_id: str, source: str | None) -> dict[str, Any]:
    """The keyword arguments `LeRobotDataset.push_to_hub` passes to LeRobot's dataset card template."""
    features = [
        {
            "key": key,
            "dtype": ft.get("dtype"),
            "shape": format_shape(ft.get("shape") or ()),
            "names": table_cell(", ".join(map(str, ft["names"]))) if isinstance(ft.get("names"), list) else "",
        }
        for key, ft in meta.features.items()
        if key not in _INDEX_COLUMNS
    ]
    bookkeeping = [
        f"`{k}`" for k in meta.features if k not in _INDEX_COLUMNS and k != "action" and not k.startswith("observation")
    ]
    notes = []
    if bookkeeping:
        notes.append(
            f"Bookkeeping for evaluation and analysis, never read by policies (neither `observation.*` nor "
            f"`action`): {', '.join(bookkeeping)}."
        )
    description = render_template(
        DATASET_TEMPLATE,
        {
            "provenance": dataset_provenance(meta, source),
            "source": source if meta.robot_type in DATASET_PRODUCERS else None,
            "robot_type": meta.robot_type,
            "episodes": meta.total_episodes,
            "frames": meta.total_frames,
            "fps": meta.fps,
            "tasks": [str(t) for t in meta.tasks.index] if meta.tasks is not None else [],
            "repo_id": repo_id,
            "codebase_version": getattr(meta.info, "codebase_version", None),
            "features": features,
            "notes": notes,
        },
    )
    return {"dataset_description": description.strip()}


@dataclass
class DatasetUpload:
    repo_id: str
    root: Path
    card: DatasetCard
    files: list[UploadFile]
    left_out: list[str]

    def describe(self) -> str:
        lines = ["----- README.md (dataset card) -----", str(self.card).rstrip(), "----- end of card -----", ""]
        total = sum(f.size for f in self.files)
        lines.append(
            f"Dataset repo https://huggingface.co/datasets/{self.repo_id}: {len(self.files)} files, "
            f"{human_size(total)}, from {self.root}, then the card as README.md and the tag of the LeRobotDataset "
            "codebase version"
        )
        width = max(len(f.path) for f in self.files)
        lines += [f"  {f.path:<{width}}  {human_size(f.size):>10}" for f in self.files]
        if self.left_out:
            lines.append("Left out (LeRobotDataset.push_to_hub ignores them): " + ", ".join(self.left_out))
        return "\n".join(lines)


def _dataset_ignore_patterns(push_videos: bool) -> list[str]:
    # What LeRobotDataset.push_to_hub passes to upload_folder, plus the defaults upload_folder adds itself.
    return ["images/", *([] if push_videos else ["videos/"]), *DEFAULT_IGNORE_PATTERNS]


def push_dataset(
    root: Path,
    repo_id: str,
    *,
    source: str | None = None,
    license: str | None = "apache-2.0",
    tags: Sequence[str] | None = None,
    private: bool | None = None,
    push_videos: bool = True,
    dry_run: bool = False,
) -> DatasetUpload:
    """Publish a local LeRobotDataset with LeRobot's own `LeRobotDataset.push_to_hub`, its card (LeRobot's
    template) saying where the data came from. With `dry_run` nothing is created or uploaded."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.utils import create_lerobot_dataset_card

    check_repo_id(repo_id)
    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{root} is not a LeRobotDataset folder (no meta/info.json).")
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    card_kwargs = dataset_card_kwargs(meta, repo_id, source)
    card_tags = ["flowstep", *(tags or [])]
    if meta.robot_type:
        card_tags.append(meta.robot_type.replace(" ", "-"))
    # The very card push_to_hub renders from the same arguments.
    card = create_lerobot_dataset_card(
        tags=card_tags, dataset_info=meta.info, license=license, repo_id=repo_id, **card_kwargs
    )
    candidates = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    kept = set(filter_repo_objects(candidates, ignore_patterns=_dataset_ignore_patterns(push_videos)))
    files = [UploadFile(p, (root / p).stat().st_size) for p in candidates if p in kept]
    upload = DatasetUpload(repo_id, root, card, files, [p for p in candidates if p not in kept])
    if dry_run:
        return upload
    require_online()
    LeRobotDataset(repo_id, root=root, video_backend=video_backend()).push_to_hub(
        tags=card_tags, license=license, private=private, push_videos=push_videos, **card_kwargs
    )
    return upload
