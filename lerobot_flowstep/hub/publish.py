"""Publishing a flowstep policy checkpoint as a Hugging Face Hub model repo.

A pushed policy repository holds what `from_pretrained`, `make_pre_post_processors` and
`lerobot-eval --policy.path=<repo_id>` read (config, weights, processors and their state files, plus
`train_config.json` when lerobot-train wrote one) and a model card (`cards.render_policy_card`), filled from the
checkpoint's config, its training config, the dataset's metadata and, only when given, the `report.json` of a
`lerobot-flowstep demo` run. A student's upload names its teacher by repo id and never holds the teacher's weights.

Everything is checked and the upload folder is built before the first network call: a bad checkpoint, repo id or
teacher reference fails before anything is created on the Hub, and `dry_run` stops right there. The upload itself
is huggingface_hub's `HfApi.create_repo` + `HfApi.upload_folder`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, constants
from lerobot.configs import PreTrainedConfig
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

from lerobot_flowstep.hub.cards import render_policy_card
from lerobot_flowstep.hub.checkpoint import (
    CONFIG_FILE,
    LOCAL_NAMESPACE,
    PROCESSOR_FILES,
    TRAIN_CONFIG_FILE,
    WEIGHTS_FILE,
    check_policy_checkpoint,
    check_published_teacher,
    check_repo_id,
    count_parameters,
    lookup,
    processor_state_files,
    read_json,
    resolve_teacher,
    sanitized_policy_config,
    sanitized_train_config,
)
from lerobot_flowstep.hub.report import load_report
from lerobot_flowstep.policies.imle_student.teacher_cache import read_cache_metadata

CARD_FILE = "README.md"


@dataclass
class UploadFile:
    """A file that goes up: its path in the repo and its size in bytes."""

    path: str
    size: int


@dataclass
class PolicyUpload:
    """A staged policy upload: the folder that goes up as is, and what was decided on the way."""

    repo_id: str
    checkpoint: Path
    folder: Path
    card: ModelCard
    files: list[UploadFile]
    left_out: list[str]
    config_changes: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)
    commit_url: str | None = None

    def describe(self) -> str:
        """The card, then the file list, as `--dry-run` prints them."""
        lines = [f"----- {CARD_FILE} -----", str(self.card).rstrip(), "----- end of card -----", ""]
        total = sum(f.size for f in self.files)
        lines.append(
            f"Model repo https://huggingface.co/{self.repo_id}: {len(self.files)} files, {human_size(total)}, "
            f"from {self.checkpoint}"
        )
        width = max(len(f.path) for f in self.files)
        lines += [f"  {f.path:<{width}}  {human_size(f.size):>10}" for f in self.files]
        if self.left_out:
            lines.append("Left out (not needed to load the policy): " + ", ".join(self.left_out))
        for name, changes in self.config_changes.items():
            if changes:
                lines.append(f"Changed in the uploaded {name}: " + "; ".join(changes))
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def human_size(size: int) -> str:
    """A file size as the upload listings print it: `812 B`, `1.5 MB`."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _list_files(folder: Path) -> list[UploadFile]:
    return [
        UploadFile(p.relative_to(folder).as_posix(), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()
    ]


def stage_policy_upload(
    checkpoint: Path,
    repo_id: str,
    folder: Path,
    *,
    teacher_repo_id: str | None = None,
    report: Path | None = None,
    dataset_repo_id: str | None = None,
    dataset_root: Path | None = None,
    require_published_teacher: bool = False,
) -> PolicyUpload:
    """Check `checkpoint` and write into `folder` exactly what `push_policy` uploads: the model card, the
    sanitized configs, the weights and the processors (with their state files).

    `require_published_teacher` (a real push): read a student's teacher from the Hub and fail when it cannot be
    read or does not fit the student. Otherwise (a dry run) no network call is made: the teacher is checked only
    if it is in the local Hub cache, and a note says when it could not be.
    """
    checkpoint = Path(checkpoint)
    check_repo_id(repo_id)
    raw_config = check_policy_checkpoint(checkpoint)
    teacher = resolve_teacher(raw_config, teacher_repo_id)
    notes: list[str] = []
    # The checkpoint's own config describes the training (teacher cache used or not); the staged copy is what
    # others load.
    config = PreTrainedConfig.from_pretrained(checkpoint)
    if teacher is not None and teacher.repo_id is not None:
        try:
            check_published_teacher(config, teacher.repo_id, local_files_only=not require_published_teacher)
        except FileNotFoundError as err:
            if require_published_teacher:
                raise ValueError(
                    f"The teacher {teacher.repo_id} cannot be read from the Hub ({err}). Publish the teacher "
                    f"first (lerobot-flowstep push <teacher checkpoint> {teacher.repo_id}); the student's card "
                    "and config point to it."
                ) from err
            notes.append(
                f"the teacher {teacher.repo_id} was not checked: it is not in the local Hub cache, and a dry run "
                "makes no network calls. A real push reads it from the Hub and requires it to be published first"
            )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FileExistsError(f"The staging folder {folder} is not empty.")
    published_config, config_changes = sanitized_policy_config(raw_config, repo_id, teacher)
    (folder / CONFIG_FILE).write_text(json.dumps(published_config, indent=4))
    changes = {CONFIG_FILE: config_changes}

    train_config = None
    if (checkpoint / TRAIN_CONFIG_FILE).is_file():
        train_config = read_json(checkpoint / TRAIN_CONFIG_FILE)
        published_train, changes[TRAIN_CONFIG_FILE] = sanitized_train_config(train_config, repo_id, teacher)
        (folder / TRAIN_CONFIG_FILE).write_text(json.dumps(published_train, indent=4))

    copied = [WEIGHTS_FILE, *PROCESSOR_FILES]
    for name in PROCESSOR_FILES:
        copied += processor_state_files(checkpoint / name)
    for name in copied:
        shutil.copy2(checkpoint / name, folder / name)
    written = {CONFIG_FILE, TRAIN_CONFIG_FILE, CARD_FILE, *copied}
    left_out = sorted(
        p.relative_to(checkpoint).as_posix()
        for p in checkpoint.rglob("*")
        if p.is_file() and p.relative_to(checkpoint).as_posix() not in written
    )

    # What others will load must parse without the training machine's files.
    PreTrainedConfig.from_pretrained(folder)

    meta = _dataset_metadata(config, train_config, dataset_repo_id, dataset_root)
    if dataset_repo_id is None:
        dataset_repo_id = lookup(train_config, "dataset.repo_id") or (meta.repo_id if meta is not None else None)
    card = render_policy_card(
        config,
        repo_id=repo_id,
        train=train_config,
        dataset_meta=meta,
        dataset_repo_id=dataset_repo_id,
        teacher=teacher,
        report=load_report(report, checkpoint) if report is not None else None,
        num_parameters=count_parameters(checkpoint / WEIGHTS_FILE),
        published=True,
    )
    card.save(str(folder / CARD_FILE))
    return PolicyUpload(repo_id, checkpoint, folder, card, _list_files(folder), left_out, changes, notes)


def _dataset_metadata(
    config: PreTrainedConfig,
    train_config: Mapping[str, Any] | None,
    repo_id: str | None,
    root: Path | None,
) -> LeRobotDatasetMetadata | None:
    """The training dataset's metadata from a local copy: the one named on the command line, else the one
    lerobot-train recorded, else the one a student's teacher cache was drawn from."""
    recorded = [(lookup(train_config, "dataset.repo_id"), lookup(train_config, "dataset.root"))]
    recorded.append(_teacher_cache_dataset(config))
    if root is None:
        for recorded_repo_id, recorded_root in recorded:
            if recorded_root and Path(recorded_root).is_dir():
                root, repo_id = Path(recorded_root), repo_id or recorded_repo_id
                break
    if root is None:
        return None
    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"The dataset root {root} has no meta/info.json: is it a LeRobotDataset folder?")
    # LeRobotDataset v3 does not store its repo id; a local copy with none recorded is labelled by its folder.
    return LeRobotDatasetMetadata(repo_id or f"{LOCAL_NAMESPACE}/{root.name}", root=root)


def _teacher_cache_dataset(config: PreTrainedConfig) -> tuple[str | None, str | None]:
    """(repo id, root) of the dataset a student's teacher cache was drawn from, as `cache-teacher` records them."""
    path = getattr(config, "teacher_cache_path", None)
    if not path or not Path(path).is_file():
        return None, None
    metadata = read_cache_metadata(path)
    return metadata.get("repo_id"), metadata.get("root")


def push_policy(
    checkpoint: Path,
    repo_id: str,
    *,
    teacher_repo_id: str | None = None,
    report: Path | None = None,
    dataset_repo_id: str | None = None,
    dataset_root: Path | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
) -> PolicyUpload:
    """Publish a flowstep checkpoint as a Hub model repo (see `stage_policy_upload` for what goes up).

    With `dry_run` nothing is created or uploaded; the returned upload's card and file list say what would be.
    """
    if not dry_run:
        require_online()
    with tempfile.TemporaryDirectory(prefix="flowstep_push_") as tmp:
        upload = stage_policy_upload(
            checkpoint,
            repo_id,
            Path(tmp) / "upload",
            teacher_repo_id=teacher_repo_id,
            report=report,
            dataset_repo_id=dataset_repo_id,
            dataset_root=dataset_root,
            require_published_teacher=not dry_run,
        )
        if dry_run:
            return upload
        api = HfApi(token=token)
        created = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=created.repo_id,
            repo_type="model",
            folder_path=upload.folder,
            commit_message=commit_message or f"Upload {upload.card.data.model_name} policy with lerobot-flowstep",
        )
        upload.commit_url = getattr(commit, "commit_url", None) or str(commit)
        return upload


def require_online() -> None:
    if constants.is_offline_mode():
        raise RuntimeError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded. Unset it to push, or use --dry-run to see the card "
            "and the files that would go up."
        )
