"""Sharing flowstep policies and their datasets through the Hugging Face Hub.

A pushed policy repository holds what `from_pretrained`, `make_pre_post_processors` and
`lerobot-eval --policy.path=<repo_id>` read (config, weights, processors and their state files, plus
`train_config.json` when lerobot-train wrote one) and a model card rendered from the templates in
`hub_cards/`, filled from the checkpoint's config, its training config, the dataset's metadata and, only when
given, the `report.json` of a `lerobot-flowstep demo` run. A student's upload names its teacher by repo id and
never holds the teacher's weights.

Everything is checked and the upload folder is built before the first network call: a bad checkpoint, repo id or
teacher reference fails before anything is created on the Hub, and `dry_run` stops right there. The upload itself
is huggingface_hub's `HfApi.create_repo` + `HfApi.upload_folder` (policies) and LeRobot's own
`LeRobotDataset.push_to_hub` (datasets).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import DatasetCard, HfApi, ModelCard, ModelCardData, constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id
from lerobot.configs import PreTrainedConfig
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from safetensors import safe_open

from lerobot_flowstep.constants import OBS_POINTCLOUD, is_camera_parameter_key, is_depth_key
from lerobot_flowstep.policies.imle_student.configuration_imle_student import check_teacher_compatibility

TEMPLATE_DIR = "hub_cards"
POLICY_TEMPLATES = {"flowstep_teacher": "teacher.md", "imle_student": "student.md"}
DATASET_TEMPLATE = "dataset.md"

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_CONFIG_FILE = "train_config.json"
PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")
CARD_FILE = "README.md"

# In this project `local/...` names data and checkpoints that exist only on disk (the generators' default
# repo ids): pushing to it is a mistake, and a card must not link to it.
LOCAL_NAMESPACE = "local"

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
_INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


# --- templates ------------------------------------------------------------------------------------------


def load_template(name: str) -> str:
    """A card template: packaged inside the wheel (`lerobot_flowstep/hub_cards/`), else from the source tree."""
    packaged = resources.files("lerobot_flowstep").joinpath(TEMPLATE_DIR, name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source = Path(__file__).resolve().parents[2] / TEMPLATE_DIR / name
    if source.is_file():
        return source.read_text(encoding="utf-8")
    raise FileNotFoundError(f"Card template '{name}' is neither in the installed package nor at {source}.")


def render_template(name: str, context: Mapping[str, Any]) -> str:
    # StrictUndefined: a field the template names but the context lacks is a bug, not an empty string in a
    # published card.
    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    return env.from_string(load_template(name)).render(**context)


# --- validation -----------------------------------------------------------------------------------------


def check_repo_id(repo_id: str, what: str = "repo_id") -> str:
    """`repo_id` if it has the form `<user or org>/<name>` the Hub accepts, else a ValueError saying why."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(
            f"{what} must have the form '<user or org>/<name>', e.g. 'my-org/flowstep-student'; got {repo_id!r}."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{what} {repo_id!r} is not a valid Hub repo id: {err}") from err
    if repo_id.split("/")[0] == LOCAL_NAMESPACE:
        raise ValueError(
            f"{what} {repo_id!r} uses the '{LOCAL_NAMESPACE}/' namespace, which this project uses for data that "
            "is only on disk. Give your Hub user or organization, e.g. 'my-org/flowstep-student'."
        )
    return repo_id


def _is_published_repo_id(repo_id: str | None) -> bool:
    try:
        return repo_id is not None and check_repo_id(repo_id) == repo_id
    except ValueError:
        return False


def _is_local_path(path: str | None) -> bool:
    return bool(path) and Path(path).expanduser().exists()


def check_policy_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """The raw `config.json` of a complete flowstep checkpoint folder; errors name whatever is missing."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(
            f"{checkpoint} is not a folder. Push a checkpoint folder such as "
            "outputs/train/<run>/checkpoints/last/pretrained_model."
        )
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, *PROCESSOR_FILES) if not (checkpoint / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{checkpoint} is not a complete policy checkpoint: {', '.join(missing)} missing. A checkpoint "
            f"holds {CONFIG_FILE}, {WEIGHTS_FILE} (weights) and {' and '.join(PROCESSOR_FILES)} (processors), as "
            "lerobot-train writes them under checkpoints/<step>/pretrained_model; without all of them the "
            "published policy could not be loaded ready to run."
        )
    config = _read_json(checkpoint / CONFIG_FILE)
    policy_type = config.get("type")
    if policy_type not in POLICY_TEMPLATES:
        raise ValueError(
            f"{checkpoint / CONFIG_FILE} holds a '{policy_type}' policy; `lerobot-flowstep push` publishes "
            f"{' and '.join(POLICY_TEMPLATES)} checkpoints."
        )
    for name in PROCESSOR_FILES:
        for state_file in processor_state_files(checkpoint / name):
            if not (checkpoint / state_file).is_file():
                raise FileNotFoundError(
                    f"{checkpoint / name} refers to {state_file}, which is not in {checkpoint}: the "
                    "processors' normalization statistics are missing."
                )
    try:
        with safe_open(str(checkpoint / WEIGHTS_FILE), framework="pt") as f:
            if not list(f.keys()):
                raise ValueError("it holds no tensors")
    except Exception as err:
        raise ValueError(f"{checkpoint / WEIGHTS_FILE} is not a readable safetensors file: {err}") from err
    return config


def processor_state_files(processor_json: Path) -> list[str]:
    """The `.safetensors` state files a saved processor pipeline loads (e.g. normalization statistics)."""
    pipeline = _read_json(processor_json)
    return [step["state_file"] for step in pipeline.get("steps", []) if step.get("state_file")]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def count_parameters(weights_file: Path) -> int:
    total = 0
    with safe_open(str(weights_file), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            total += math.prod(f.get_slice(key).get_shape())
    return total


# --- the teacher reference of a student -----------------------------------------------------------------


@dataclass
class TeacherReference:
    """Where a student's teacher is: a Hub repo id (publishable) and/or the local folder it was trained with."""

    repo_id: str | None
    local_path: str | None


def resolve_teacher(config: Mapping[str, Any], teacher_repo_id: str | None) -> TeacherReference | None:
    """The teacher a student upload must name; None for the teacher-free regression baseline."""
    if config.get("type") != "imle_student" or config.get("objective") == "regression":
        return None
    teacher_path = config.get("teacher_path")
    local = teacher_path if _is_local_path(teacher_path) else None
    if teacher_repo_id is not None:
        return TeacherReference(check_repo_id(teacher_repo_id, "--teacher-repo-id"), local)
    if teacher_path and local is None and _is_published_repo_id(teacher_path):
        return TeacherReference(teacher_path, None)
    if not teacher_path:
        raise ValueError(
            "This student's config.json has no teacher_path, so the upload could not say which teacher it was "
            "distilled from. Give the teacher's Hub repo id with --teacher-repo-id <org>/<teacher>."
        )
    raise ValueError(
        f"This student's teacher_path is {teacher_path!r}, a local checkpoint, not a Hub repo id: the upload must "
        "name a teacher others can find. Publish the teacher first (lerobot-flowstep push "
        f"{teacher_path} <org>/<teacher>) and give its repo id with --teacher-repo-id <org>/<teacher>."
    )


def check_published_teacher(
    student_config: PreTrainedConfig, teacher_repo_id: str, local_files_only: bool = False
) -> PreTrainedConfig:
    """The teacher's config read by repo id (from the Hub cache only with `local_files_only`), checked against
    the student. A student whose recorded teacher does not fit it would fail to load wherever that teacher is
    reachable, since `ImleStudentPolicy` checks the pair when it is built.

    Raises FileNotFoundError when the teacher cannot be read, ValueError when it does not fit.
    """
    try:
        teacher = PreTrainedConfig.from_pretrained(teacher_repo_id, local_files_only=local_files_only)
    except Exception as err:  # huggingface_hub raises a different class per cause (offline, 401, 404, cache miss)
        raise FileNotFoundError(f"cannot read {teacher_repo_id}/config.json: {err}") from err
    if teacher.type != "flowstep_teacher":
        raise ValueError(f"The teacher repo {teacher_repo_id} holds a '{teacher.type}' policy, not a flowstep_teacher.")
    check_teacher_compatibility(student_config, teacher)
    return teacher


# --- what goes up -----------------------------------------------------------------------------------------


def sanitized_policy_config(
    config: Mapping[str, Any], repo_id: str, teacher: TeacherReference | None
) -> tuple[dict[str, Any], list[str]]:
    """A copy of a policy config fit for publishing, and what was changed.

    Paths of the training machine are cleared: the teacher cache is a local file used only in training, and the
    backbone file only initializes a network whose trained weights are in model.safetensors (left set, it would
    make loading fail on any other machine). The teacher is named by its repo id.
    """
    out = json.loads(json.dumps(config))
    changes = []

    def change(keys: Sequence[str], value: Any) -> None:
        node = out
        for key in keys[:-1]:
            node = node.get(key)
            if not isinstance(node, dict):
                return
        if keys[-1] in node and node[keys[-1]] != value:
            changes.append(f"{'.'.join(keys)}: {node[keys[-1]]!r} -> {value!r}")
            node[keys[-1]] = value

    change(["repo_id"], repo_id)
    if teacher is not None:
        change(["teacher_path"], teacher.repo_id)
    change(["teacher_cache_path"], None)
    change(["encoder", "pretrained_backbone_path"], None)
    return out, changes


def sanitized_train_config(
    train_config: Mapping[str, Any], repo_id: str, teacher: TeacherReference | None
) -> tuple[dict[str, Any], list[str]]:
    """lerobot-train's `train_config.json`, its policy section published like `config.json`; the dataset root is
    a folder of the training machine (the dataset is found by its repo id elsewhere)."""
    out = json.loads(json.dumps(train_config))
    changes = []
    if isinstance(out.get("policy"), dict):
        out["policy"], policy_changes = sanitized_policy_config(out["policy"], repo_id, teacher)
        changes += [f"policy.{c}" for c in policy_changes]
    dataset = out.get("dataset")
    if isinstance(dataset, dict) and dataset.get("root") is not None:
        changes.append(f"dataset.root: {dataset['root']!r} -> None")
        dataset["root"] = None
    return out, changes


@dataclass
class UploadFile:
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
            f"Model repo https://huggingface.co/{self.repo_id}: {len(self.files)} files, {_human_size(total)}, "
            f"from {self.checkpoint}"
        )
        width = max(len(f.path) for f in self.files)
        lines += [f"  {f.path:<{width}}  {_human_size(f.size):>10}" for f in self.files]
        if self.left_out:
            lines.append("Left out (not needed to load the policy): " + ", ".join(self.left_out))
        for name, changes in self.config_changes.items():
            if changes:
                lines.append(f"Changed in the uploaded {name}: " + "; ".join(changes))
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def _human_size(size: int) -> str:
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
        train_config = _read_json(checkpoint / TRAIN_CONFIG_FILE)
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
        dataset_repo_id = _lookup(train_config, "dataset.repo_id") or (meta.repo_id if meta is not None else None)
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
    recorded = [(_lookup(train_config, "dataset.repo_id"), _lookup(train_config, "dataset.root"))]
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
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
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


# --- the model card -------------------------------------------------------------------------------------


def render_policy_card(
    config: PreTrainedConfig,
    *,
    repo_id: str | None,
    train: Any = None,
    dataset_meta: LeRobotDatasetMetadata | None = None,
    dataset_repo_id: str | None = None,
    teacher: TeacherReference | None = None,
    report: Mapping[str, Any] | None = None,
    num_parameters: int | None = None,
    published: bool = False,
) -> ModelCard:
    """The model card of a flowstep policy, from its config, its training config (lerobot-train's
    `TrainPipelineConfig` or the `train_config.json` dict), the dataset's metadata and, only when given, a demo
    report prepared by `load_report`.

    `teacher`: a student's teacher reference; left None for a student, it is read from `config.teacher_path`.
    `published`: the config uploaded with this card was sanitized by `sanitized_policy_config`; otherwise (lerobot-
    train's own push) the card warns about paths of the training machine left in it.
    """
    policy_type = config.type
    if policy_type not in POLICY_TEMPLATES:
        raise ValueError(f"No card template for policy type '{policy_type}'.")
    repo_id = repo_id or "<org>/<name>"
    dataset_repo_id = dataset_repo_id or _lookup(train, "dataset.repo_id") or getattr(dataset_meta, "repo_id", None)
    robot_type = getattr(dataset_meta, "robot_type", None)
    is_student = policy_type == "imle_student"
    if is_student and teacher is None and config.objective == "imle":
        path = config.teacher_path
        local = _is_local_path(path) or not _is_published_repo_id(path)
        teacher = TeacherReference(None if local else path, path if local else None)

    tags = ["robotics", "lerobot", policy_type, "flowstep", "action-chunking", "multi-modal"]
    if not is_student:
        tags.append("flow-matching")
    elif config.objective == "imle":
        tags += ["imle", "one-step", "distillation"]
    else:
        tags.append("regression-baseline")
    tags += [t for t in (config.tags or []) if t not in tags]
    card_data = ModelCardData(
        license=config.license or "apache-2.0",
        library_name="lerobot",
        pipeline_tag="robotics",
        tags=tags,
        datasets=[dataset_repo_id] if _is_published_repo_id(dataset_repo_id) else None,
        model_name=policy_type,
        teacher_repo_id=teacher.repo_id if teacher is not None else None,
    )
    context = {
        "card_data": card_data.to_yaml(),
        "repo_id": repo_id,
        "policy": _policy_context(config),
        "network": _network_context(config),
        "encoder_summary": _encoder_summary(config),
        "num_parameters": f"{num_parameters:,}" if num_parameters is not None else "an unrecorded number of",
        "teacher": {
            "repo_id": teacher.repo_id if teacher else None,
            "local_path": teacher.local_path if teacher else None,
        },
        "inputs": _inputs_context(config, dataset_meta),
        "cameras": _cameras_context(config),
        "pointcloud": _pointcloud_context(config),
        "action": _action_context(config, dataset_meta),
        "dataset": _dataset_context(dataset_repo_id, dataset_meta),
        "training": _training_context(train),
        "report": report,
        "eval_env_args": _eval_env_args(config, robot_type),
        "limitations": _extra_limitations(config, robot_type, published),
    }
    # ModelCard parses the front matter: invalid YAML fails here, before anything is uploaded.
    return ModelCard(render_template(POLICY_TEMPLATES[policy_type], context))


def _lookup(obj: Any, dotted: str) -> Any:
    """`a.b.c` from nested dicts (train_config.json) or attributes (TrainPipelineConfig); None when absent."""
    for key in dotted.split("."):
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
    return obj


def _cell(value: Any) -> str:
    """A value fit for a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _mode_name(value: Any) -> str:
    return getattr(value, "value", value)


def _policy_context(config: PreTrainedConfig) -> dict[str, Any]:
    if config.type == "flowstep_teacher":
        calls_per_step = 1 if config.ode_solver == "euler" else 2
        return {
            "num_inference_steps": config.num_inference_steps,
            "ode_solver": config.ode_solver,
            "time_sampling": config.time_sampling,
            "network_calls": config.num_inference_steps * calls_per_step,
        }
    names = (
        "objective",
        "num_inference_candidates",
        "num_student_samples",
        "num_teacher_samples",
        "num_candidate_sets",
        "include_dataset_action",
        "coverage_weight",
        "fidelity_weight",
        "teacher_ode_solver",
        "teacher_num_inference_steps",
    )
    return {**{n: getattr(config, n) for n in names}, "teacher_samples": _teacher_samples(config)}


def _teacher_samples(config: PreTrainedConfig) -> str:
    """How the distillation targets were drawn. With a cache, the cache's own settings are what counted (the
    config's teacher_* sampling fields are then unused), and only the cache file records them."""
    online = f"`{config.teacher_ode_solver}` solver, {config.teacher_num_inference_steps} ODE steps"
    if not config.teacher_cache_path:
        return f"{online}, drawn during training"
    precomputed = "precomputed once per dataset frame (`lerobot-flowstep cache-teacher`)"
    if not Path(config.teacher_cache_path).is_file():
        return f"{precomputed}; the cache file, which records its solver settings, was not available for this card"
    with safe_open(config.teacher_cache_path, framework="pt") as f:
        metadata = f.metadata() or {}
    return f"`{metadata.get('solver', '?')}` solver, {metadata.get('num_steps', '?')} ODE steps, {precomputed}"


def _network_context(config: PreTrainedConfig) -> dict[str, Any]:
    net = config.network
    if net.type == "mlp":
        summary = f"width {net.hidden_dim}, {net.num_blocks} FiLM-conditioned residual blocks"
    else:
        summary = f"1-D temporal U-Net, channels {list(net.down_dims)}, kernel {net.kernel_size}"
    return {"type": net.type, "summary": summary}


def _encoder_summary(config: PreTrainedConfig) -> str:
    keys = config.input_features
    parts = [f"{config.encoder.cond_dim}-d condition from {config.n_obs_steps} observation(s)"]
    if any(k.startswith("observation.image") for k in keys):
        parts.append(f"`{config.encoder.vision_backbone}` image backbone with spatial-softmax keypoints")
    if OBS_POINTCLOUD in keys:
        parts.append("PointNet on the point cloud")
    return ", ".join(parts)


def _feature_role(key: str, names: Any) -> str:
    if key == OBS_POINTCLOUD:
        return "point cloud, made by the preprocessor from depth (not an input you provide)"
    if key.startswith("observation.images."):
        return f"RGB image of camera `{key.split('.', 2)[2]}`"
    if key == "observation.image":
        return "RGB image"
    if is_depth_key(key):
        return f"metric depth (m, camera-frame z) of camera `{key.split('.', 2)[2]}`"
    if is_camera_parameter_key(key):
        camera, what = key.split(".")[2:4]
        described = "pinhole intrinsics (OpenCV)" if what == "intrinsics" else "camera-to-world transform"
        return f"{described} of camera `{camera}`"
    role = {"observation.state": "robot state", "observation.environment_state": "environment state"}.get(key, "")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names) and len(names) <= 16:
        role = f"{role}: {', '.join(names)}" if role else ", ".join(names)
    return role


def _inputs_context(config: PreTrainedConfig, meta: LeRobotDatasetMetadata | None) -> list[dict[str, str]]:
    features = meta.features if meta is not None else {}
    return [
        {
            "key": key,
            "type": _mode_name(feature.type),
            "shape": _shape(feature.shape),
            "role": _cell(_feature_role(key, features.get(key, {}).get("names"))),
        }
        for key, feature in config.input_features.items()
    ]


def _cameras_context(config: PreTrainedConfig) -> list[dict[str, str]]:
    keys = set(config.input_features)
    names = sorted(
        {k.split(".", 2)[2] for k in keys if k.startswith("observation.images.") or is_depth_key(k)}
        | {k.split(".")[2] for k in keys if is_camera_parameter_key(k)}
    )
    cameras = []
    for name in names:
        streams = []
        if f"observation.images.{name}" in keys:
            streams.append("RGB")
        if f"observation.depth.{name}" in keys:
            streams.append("depth")
        if f"observation.camera.{name}.intrinsics" in keys:
            streams.append("per-frame intrinsics and extrinsics")
        elif name in config.pointcloud.fixed_cameras:
            streams.append("fixed camera parameters from the config")
        cameras.append({"name": name, "streams": ", ".join(streams)})
    if "observation.image" in keys:
        cameras.insert(0, {"name": "image", "streams": "RGB"})
    return cameras


def _pointcloud_context(config: PreTrainedConfig) -> dict[str, Any] | None:
    pc = config.pointcloud
    if not pc.cameras:
        return None
    return {"cameras": ", ".join(f"`{c}`" for c in pc.cameras), "num_points": pc.num_points, "use_rgb": pc.use_rgb}


def _action_context(config: PreTrainedConfig, meta: LeRobotDatasetMetadata | None) -> dict[str, Any]:
    names = meta.features.get("action", {}).get("names") if meta is not None else None
    fps = meta.fps if meta is not None else None
    return {
        "shape": _shape(config.action_feature.shape),
        "names": ", ".join(f"`{n}`" for n in names) if isinstance(names, list) and names else None,
        "normalization": _mode_name(config.normalization_mapping.get("ACTION", "IDENTITY")),
        "horizon": config.horizon,
        "n_action_steps": config.n_action_steps,
        "n_obs_steps": config.n_obs_steps,
        "fps": fps,
        "chunk_seconds": f"{config.horizon / fps:g}" if fps else None,
    }


def _dataset_context(repo_id: str | None, meta: LeRobotDatasetMetadata | None) -> dict[str, Any] | None:
    if repo_id is None and meta is None:
        return None
    return {
        "repo_id": repo_id,
        "on_hub": _is_published_repo_id(repo_id),
        "meta": None
        if meta is None
        else {
            "robot_type": meta.robot_type,
            "episodes": meta.total_episodes,
            "frames": meta.total_frames,
            "fps": meta.fps,
            "tasks": [str(t) for t in meta.tasks.index] if meta.tasks is not None else [],
        },
    }


def _training_context(train: Any) -> dict[str, Any] | None:
    if train is None:
        return None
    return {
        "trainer": "lerobot-train",
        "steps": _lookup(train, "steps"),
        "batch_size": _lookup(train, "batch_size"),
        "seed": _lookup(train, "seed"),
        "optimizer": _lookup(train, "optimizer.type"),
        "lr": _lookup(train, "optimizer.lr"),
    }


def _eval_env_args(config: PreTrainedConfig, robot_type: str | None) -> str:
    """`--env.*` arguments matching the training data, where the dataset says which env that is."""
    inputs = config.input_features
    if robot_type == "flowstep_obstacle":
        from lerobot_flowstep.envs.obstacle import ObstacleLayout

        args = ["--env.type=flowstep_obstacle"]
        env_state = inputs.get("observation.environment_state")
        if env_state is not None:
            obstacles = (env_state.shape[0] - 2) // 2
            modes = [n for n in (2, 4) if ObstacleLayout.preset(n).num_obstacles == obstacles]
            if modes and modes[0] != 2:
                args.append(f"--env.num_modes={modes[0]}")
        image = inputs.get("observation.images.top")
        if image is not None:
            args += ["--env.camera=true", f"--env.image_size={image.shape[-1]}"]
        return " ".join(args)
    if robot_type == "rlbench_panda":
        cameras = sorted({k.split(".", 2)[2] for k in inputs if k.startswith("observation.images.")})
        return f"--env.type=rlbench --env.task=<rlbench task> --env.cameras=[{','.join(cameras)}]"
    return "--env.type=<env matching the training data>"


def _extra_limitations(config: PreTrainedConfig, robot_type: str | None, published: bool) -> list[str]:
    lines = []
    if robot_type == "flowstep_obstacle":
        lines.append(
            "Trained on ObstacleReach, a simulated 2-D task embedded in the plugin to demonstrate the method: it "
            "does not control a physical robot."
        )
    if not published:
        local = {
            "teacher_cache_path": getattr(config, "teacher_cache_path", None),
            "encoder.pretrained_backbone_path": config.encoder.pretrained_backbone_path,
        }
        if _is_local_path(getattr(config, "teacher_path", None)):
            local["teacher_path"] = config.teacher_path
        local = {k: v for k, v in local.items() if v}
        if local:
            lines.append(
                "`config.json` still names files of the training machine ("
                + ", ".join(f"`{k}`" for k in local)
                + "). `lerobot-flowstep push` publishes a checkpoint without them."
                + (
                    " `encoder.pretrained_backbone_path` is read when the policy is built: override it with "
                    "`--policy.encoder.pretrained_backbone_path=null` to load elsewhere."
                    if "encoder.pretrained_backbone_path" in local
                    else ""
                )
            )
    return lines


# --- demo reports -----------------------------------------------------------------------------------------

_REPORT_STATS = {
    "success_rate",
    "modes_covered",
    "num_modes",
    "mode_entropy",
    "off_manifold",
    "mode_histogram",
    "latency",
    "checkpoint",
    "bare_forward_latency",
}
_DEMO_FLAGS = (
    ("output_dir", "--output-dir"),
    ("num_modes", "--num-modes"),
    ("num_episodes", "--episodes"),
    ("teacher_steps", "--teacher-steps"),
    ("student_steps", "--student-steps"),
    ("regression_steps", "--regression-steps"),
    ("eval_episodes", "--eval-episodes"),
    ("seed", "--seed"),
    ("threads", "--threads"),
)


def load_report(path: Path, checkpoint: Path) -> dict[str, Any]:
    """The card's measurement section from a `lerobot-flowstep demo` report: every method of the run, the rows of
    `checkpoint` marked. Fails when the report did not measure this checkpoint: numbers of another model must
    never end up on its card."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No report at {path}; `lerobot-flowstep demo` writes report.json in its output dir.")
    report = _read_json(path)
    results = report.get("results")
    if not isinstance(results, dict):
        raise ValueError(f"{path} is not a `lerobot-flowstep demo` report (no 'results').")
    target = Path(checkpoint).resolve()
    measured = {Path(r["checkpoint"]).resolve() for r in results.values() if isinstance(r, dict) and "checkpoint" in r}
    if target not in measured:
        raise ValueError(
            f"{path} has no measurements of {checkpoint}; it measured {', '.join(sorted(map(str, measured)))}. "
            "Attach the report of the run that produced this checkpoint."
        )
    rows = []
    for name, r in results.items():
        if not isinstance(r, dict) or "success_rate" not in r:
            continue
        latency = r.get("latency")
        overrides = ", ".join(f"{k}={v}" for k, v in r.items() if k not in _REPORT_STATS)
        this_model = "checkpoint" in r and Path(r["checkpoint"]).resolve() == target
        marker = ["**this model**"] if this_model else []
        marker += [f"({overrides})"] if overrides else []
        rows.append(
            {
                "name": _cell(name if "checkpoint" in r else f"{name} (uniformly random actions)"),
                "marker": _cell(" ".join(marker)),
                "success": f"{r['success_rate']:.1%}",
                "modes": f"{r['modes_covered']}/{r['num_modes']}" if "modes_covered" in r else "-",
                "off_manifold": f"{r['off_manifold']:.1%}" if "off_manifold" in r else "-",
                "latency": (
                    f"{latency['median_ms']:.3f} ms ({latency['p10_ms']:.3f}-{latency['p90_ms']:.3f})"
                    if latency
                    else "-"
                ),
                "hz": f"{latency['hz']:.0f}" if latency else "-",
            }
        )
    settings = report.get("settings", {})
    repeats = {r["latency"]["repeats"] for r in results.values() if isinstance(r, dict) and r.get("latency")}
    scalar = {k: v for k, v in settings.items() if isinstance(v, (int, float, str)) and k != "output_dir"}
    return {
        "command": report.get("command") or demo_command(settings),
        "machine": report.get("machine") or "a machine the report does not describe",
        "episodes": settings.get("eval_episodes", "?"),
        "repeats": ", ".join(map(str, sorted(repeats))) or "?",
        "settings": _cell(", ".join(f"`{k}={v}`" for k, v in scalar.items())),
        "rows": rows,
        "path": str(path),
    }


def demo_command(settings: Mapping[str, Any]) -> str:
    """The `lerobot-flowstep demo` command line that reproduces a report's settings."""
    args = [f"{flag} {settings[key]}" for key, flag in _DEMO_FLAGS if key in settings]
    return " ".join(["lerobot-flowstep demo", *args])


# --- datasets -----------------------------------------------------------------------------------------------


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
            "shape": _shape(ft.get("shape") or ()),
            "names": _cell(", ".join(map(str, ft["names"]))) if isinstance(ft.get("names"), list) else "",
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
            f"{_human_size(total)}, from {self.root}, then the card as README.md and the tag of the LeRobotDataset "
            "codebase version"
        )
        width = max(len(f.path) for f in self.files)
        lines += [f"  {f.path:<{width}}  {_human_size(f.size):>10}" for f in self.files]
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
    LeRobotDataset(repo_id, root=root).push_to_hub(
        tags=card_tags, license=license, private=private, push_videos=push_videos, **card_kwargs
    )
    return upload
