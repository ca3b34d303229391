"""The model card of a flowstep policy: the template of its type (`hub_cards/teacher.md`, `student.md`) filled
from its config, its training config, the training dataset's metadata and, when given, demo measurements
(`report.load_report`). `lerobot-flowstep push` and lerobot-train's own push both render it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from lerobot.configs import PreTrainedConfig
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

from lerobot_flowstep.constants import OBS_POINTCLOUD, is_camera_parameter_key, is_depth_key
from lerobot_flowstep.hub.checkpoint import TeacherReference, is_local_path, is_published_repo_id, lookup
from lerobot_flowstep.hub.templates import POLICY_TEMPLATES, format_shape, render_template, table_cell
from lerobot_flowstep.policies.imle_student.teacher_cache import read_cache_metadata

# The `--env.num_modes` of each ObstacleReach scene (`ObstacleLayout.preset`) by its number of obstacles: the
# expert passes each obstacle on either side. Written out here so that cards need no env code; a test checks it
# against the presets.
OBSTACLE_SCENE_MODES = {1: 2, 2: 4}


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
    dataset_repo_id = dataset_repo_id or lookup(train, "dataset.repo_id") or getattr(dataset_meta, "repo_id", None)
    robot_type = getattr(dataset_meta, "robot_type", None)
    is_student = policy_type == "imle_student"
    if is_student and teacher is None:
        path = config.teacher_path
        local = is_local_path(path) or not is_published_repo_id(path)
        teacher = TeacherReference(None if local else path, path if local else None)

    tags = ["robotics", "lerobot", policy_type, "flowstep", "action-chunking", "multi-modal"]
    if policy_type == "flowstep_teacher":
        tags.append("flow-matching")
    elif is_student:
        tags += ["imle", "one-step", "distillation"]
    else:
        tags.append("regression-baseline")
    tags += [t for t in (config.tags or []) if t not in tags]
    card_data = ModelCardData(
        license=config.license or "apache-2.0",
        library_name="lerobot",
        pipeline_tag="robotics",
        tags=tags,
        datasets=[dataset_repo_id] if is_published_repo_id(dataset_repo_id) else None,
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
    if config.type == "flowstep_regression":
        return {"regression": True}
    names = (
        "num_inference_candidates",
        "num_student_samples",
        "num_teacher_samples",
        "num_candidate_sets",
        "include_dataset_action",
        "coverage_weight",
        "fidelity_weight",
        "energy_weight",
        "teacher_ode_solver",
        "teacher_num_inference_steps",
    )
    return {**{n: getattr(config, n) for n in names}, "regression": False, "teacher_samples": _teacher_samples(config)}


def _teacher_samples(config: PreTrainedConfig) -> str:
    """How the distillation targets were drawn. With a cache, the cache's own settings are what counted (the
    config's teacher_* sampling fields are then unused), and only the cache file records them."""
    online = f"`{config.teacher_ode_solver}` solver, {config.teacher_num_inference_steps} ODE steps"
    if not config.teacher_cache_path:
        return f"{online}, drawn during training"
    precomputed = "precomputed once per dataset frame (`lerobot-flowstep cache-teacher`)"
    if not Path(config.teacher_cache_path).is_file():
        return f"{precomputed}; the cache file, which records its solver settings, was not available for this card"
    metadata = read_cache_metadata(config.teacher_cache_path)
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
            "shape": format_shape(feature.shape),
            "role": table_cell(_feature_role(key, features.get(key, {}).get("names"))),
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
        "shape": format_shape(config.action_feature.shape),
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
        "on_hub": is_published_repo_id(repo_id),
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
        "steps": lookup(train, "steps"),
        "batch_size": lookup(train, "batch_size"),
        "seed": lookup(train, "seed"),
        "optimizer": lookup(train, "optimizer.type"),
        "lr": lookup(train, "optimizer.lr"),
    }


def _eval_env_args(config: PreTrainedConfig, robot_type: str | None) -> str:
    """`--env.*` arguments matching the training data, where the dataset says which env that is."""
    inputs = config.input_features
    if robot_type == "flowstep_obstacle":
        args = ["--env.type=flowstep_obstacle"]
        env_state = inputs.get("observation.environment_state")
        if env_state is not None:
            # The environment state is the goal (x, y), then each obstacle's centre (x, y).
            modes = OBSTACLE_SCENE_MODES.get((env_state.shape[0] - 2) // 2)
            if modes is not None and modes != 2:  # 2 is the env's default
                args.append(f"--env.num_modes={modes}")
        image = inputs.get("observation.images.top")
        if image is not None:
            args += ["--env.camera=true", f"--env.image_size={image.shape[-1]}"]
        return " ".join(args)
    if robot_type == "rlbench_panda":
        cameras = sorted({k.split(".", 2)[2] for k in inputs if k.startswith("observation.images.")})
        return f"--env.type=rlbench --env.task=<rlbench task> --env.cameras=[{','.join(cameras)}]"
    if robot_type == "flowstep_metaworld":
        depths = [k for k in inputs if k.startswith("observation.depth.")]
        cameras = sorted(k.removeprefix("observation.depth.") for k in depths)
        size = f" --env.image_size={inputs[depths[0]].shape[-1]}" if depths else ""
        return f"--env.type=flowstep_metaworld --env.task=<metaworld task> --env.cameras=[{','.join(cameras)}]{size}"
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
        if is_local_path(getattr(config, "teacher_path", None)):
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
