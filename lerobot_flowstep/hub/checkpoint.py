"""What a policy checkpoint must hold to be published, and the copy of its configs that goes up.

Checks run before anything touches the network: a bad repo id, an incomplete checkpoint or a student whose teacher
cannot be named by repo id fails here. The published configs name the teacher by repo id and drop the paths of the
training machine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from lerobot.configs import PreTrainedConfig
from safetensors import safe_open

from lerobot_flowstep.hub.templates import POLICY_TEMPLATES
from lerobot_flowstep.policies.imle_student.configuration_imle_student import check_teacher_compatibility

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_CONFIG_FILE = "train_config.json"
PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")

# In this project `local/...` names data and checkpoints that exist only on disk (the generators' default
# repo ids): pushing to it is a mistake, and a card must not link to it.
LOCAL_NAMESPACE = "local"


# --- repo ids and paths -----------------------------------------------------------------------------------


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


def is_published_repo_id(repo_id: str | None) -> bool:
    """Whether `repo_id` can name a Hub repo (a card may link to it)."""
    try:
        return repo_id is not None and check_repo_id(repo_id) == repo_id
    except ValueError:
        return False


def is_local_path(path: str | None) -> bool:
    return bool(path) and Path(path).expanduser().exists()


# --- the checkpoint folder ------------------------------------------------------------------------------------


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
    config = read_json(checkpoint / CONFIG_FILE)
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
    pipeline = read_json(processor_json)
    return [step["state_file"] for step in pipeline.get("steps", []) if step.get("state_file")]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file; a ValueError naming the file when it does not parse."""
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


def lookup(obj: Any, dotted: str) -> Any:
    """`a.b.c` from nested dicts (train_config.json) or attributes (TrainPipelineConfig); None when absent."""
    for key in dotted.split("."):
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
    return obj


# --- the teacher reference of a student -----------------------------------------------------------------


@dataclass
class TeacherReference:
    """Where a student's teacher is: a Hub repo id (publishable) and/or the local folder it was trained with."""

    repo_id: str | None
    local_path: str | None


def resolve_teacher(config: Mapping[str, Any], teacher_repo_id: str | None) -> TeacherReference | None:
    """The teacher a student upload must name; None for the teacher-free regression baseline."""
    if config.get("type") != "imle_student":
        return None
    teacher_path = config.get("teacher_path")
    local = teacher_path if is_local_path(teacher_path) else None
    if teacher_repo_id is not None:
        return TeacherReference(check_repo_id(teacher_repo_id, "--teacher-repo-id"), local)
    if teacher_path and local is None and is_published_repo_id(teacher_path):
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


# --- the published configs ------------------------------------------------------------------------------------


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
    change(["perturbed_cache_path"], None)
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
