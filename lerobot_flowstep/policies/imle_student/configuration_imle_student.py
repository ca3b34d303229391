"""Configuration of the one-step IMLE student."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from huggingface_hub.constants import CONFIG_NAME
from lerobot.configs import PreTrainedConfig

from lerobot_flowstep.constants import OBS_POINTCLOUD
from lerobot_flowstep.core.config_errors import command_line_errors
from lerobot_flowstep.core.flow_matching import SOLVERS
from lerobot_flowstep.policies.common.config_base import FlowstepBaseConfig

# What the student copies from its teacher, so that both see the same observations, predict the same
# chunks and share one normalization. `input_features` included: a teacher trained on a subset of the
# dataset's features (e.g. the point cloud without the images) has a student that sees that subset.
INHERITED_FIELDS = (
    "input_features",
    "n_obs_steps",
    "horizon",
    "n_action_steps",
    "drop_n_last_frames",
    "normalization_mapping",
    "encoder",
    "network",
    "pointcloud",
    "depth_maps",
    "depth_unit",
)


# How the executed chunk is chosen among the inference candidates (`select_candidate`).
CANDIDATE_RULES = ("consistency", "density", "consistent_density")


def load_teacher_config(teacher_path: str) -> PreTrainedConfig:
    """The teacher's saved config (a local checkpoint folder or a Hub repo id, offline from the cache), read
    once per process and file version: building the config, the policy and its teacher all ask for it."""
    local = Path(teacher_path) / CONFIG_NAME
    version = local.stat().st_mtime_ns if local.is_file() else None
    return copy.deepcopy(_read_teacher_config(teacher_path, version))


@functools.lru_cache(maxsize=8)
def _read_teacher_config(teacher_path: str, version: int | None) -> PreTrainedConfig:
    try:
        config = PreTrainedConfig.from_pretrained(teacher_path)
    except Exception as err:
        raise FileNotFoundError(
            f"Cannot read the teacher checkpoint '{teacher_path}' (teacher_path): {err}. Give a folder "
            "holding config.json and model.safetensors (e.g. .../checkpoints/last/pretrained_model) or a "
            "Hub repo id present in the local cache."
        ) from err
    if config.type != "flowstep_teacher":
        raise ValueError(
            f"teacher_path '{teacher_path}' holds a '{config.type}' policy, not a flowstep_teacher: only a "
            "flowstep_teacher checkpoint can be distilled (a student's config.json names its teacher as teacher_path)."
        )
    return config


@PreTrainedConfig.register_subclass("imle_student")
@command_line_errors
@dataclass
class ImleStudentConfig(FlowstepBaseConfig):
    """One-step generator of action chunks, distilled from a `flowstep_teacher` by set-level IMLE.

    Args:
    teacher_path: the teacher checkpoint (folder or Hub repo id). Needed to train with the `imle`
        objective, never at inference.
    inherit_teacher_config: copy horizon, observation history, encoder, network and point-cloud settings
        from the teacher (recommended). When false they must already match, or start-up fails.
    objective: always "imle"; kept so that saved students still load. The regression baseline is its own
        policy type, `flowstep_regression`.
    num_teacher_samples, num_student_samples: M and K of the per-observation Chamfer objective.
    num_candidate_sets: IMLE selection: C sets of K latents per observation, only the best set is trained.
    coverage_weight, fidelity_weight: weights of the two Chamfer directions.
    energy_weight: weight of the energy score, 2 E|S-T| - E|S-S'| (`core.imle.energy_score`), added to the
        Chamfer loss. Chamfer at finite K and M is minimized by a set narrower than its targets; the energy
        score is minimized only by the targets' distribution, so it holds the student's spread. 0 = plain
        Chamfer, the paper's objective. Needs num_student_samples >= 2.
    paired_weight: weight of paired distillation (`core.imle.paired_distances`): the student's samples start
        from the latents of the teacher's samples, and each is regressed onto the teacher's chunk from the same
        latent, i.e. onto the teacher's deterministic noise-to-chunk map. Set the Chamfer weights to 0 for pure
        paired distillation. Needs num_student_samples == num_teacher_samples, num_candidate_sets == 1 and,
        with a cache, one that holds latents.
    observation_noise_std, num_perturbed_samples: distillation beyond the stored frames. With
        observation_noise_std > 0, every step also perturbs the batch's low-dimensional observations (state and
        environment state, in normalized units; the same offset for every frame of an observation's history), has
        the teacher draw num_perturbed_samples chunks for each perturbed observation online, and regresses the
        student's chunks from the same latents onto them (weighted like paired_weight). The student then learns
        the teacher's map around the dataset's observations, not only at them: that is where a closed-loop
        rollout goes. Needs paired_weight > 0; costs num_perturbed_samples teacher samples per frame per step,
        unless perturbed_cache_path gives them.
    include_dataset_action: add the dataset's own chunk to the teacher samples as one more target.
    teacher_num_inference_steps, teacher_ode_solver: how teacher samples are drawn for distillation; the
        student inherits the error of these samples, so they are drawn more accurately than at deployment.
    teacher_cache_path: samples precomputed by `lerobot-flowstep cache-teacher`, keyed by dataset frame index.
        A cache holding more samples per frame than num_teacher_samples gives every step a fresh random subset
        of them (with their latents), so a larger cache is more targets, not a longer file.
    perturbed_cache_path: the teacher's chunks at perturbed observations, drawn once by `lerobot-flowstep
        cache-teacher --observation-noise-std` (each cached sample at its own perturbed copy of its frame), which
        replace the online teacher of observation_noise_std's term: each step regresses the student on
        num_perturbed_samples of each frame's copies. The cache's noise must equal observation_noise_std.
    init_from_teacher: start the encoder and generator from the teacher's encoder and velocity network
        (the generator is z + f(z, t=0 | obs), which is exactly the teacher's one-step Euler sampler at
        initialization).
    extra_generator_blocks: residual FiLM blocks the student's generator has beyond its teacher's MLP, for more
        capacity than the teacher's one network pass. With init_from_teacher they start as the identity (their
        last layer zero), so the student still starts as one-step CFM. Each costs one block of latency.
    num_inference_candidates: at inference, draw this many latents in one batched forward pass and keep one
        chunk by `candidate_selection`; 1 = a single sample.
    candidate_selection: "consistency" keeps the chunk most consistent with the previous chunk (smoother
        receding-horizon control); "density" the one in the densest region of the candidates; and
        "consistent_density" the densest among the quarter most consistent with the previous chunk. The
        first chunk of an episode is the densest candidate under every rule.
    rtc_config: real-time chunking settings (LeRobot's `RTCConfig`), set by `lerobot-rollout --inference.type=rtc`
        (not saved with the checkpoint). With a left-over prefix the executed candidate is the one nearest it under
        RTC's prefix weights (see `ImleStudentPolicy.predict_action_chunk`); `enabled=false` ignores the left-over.
    """

    teacher_path: str | None = None
    inherit_teacher_config: bool = True
    # Set once the teacher's settings have been copied (and saved with the student), so that loading a
    # trained student never needs the teacher.
    teacher_config_inherited: bool = False
    objective: str = "imle"
    num_teacher_samples: int = 16
    num_student_samples: int = 16
    num_candidate_sets: int = 1
    coverage_weight: float = 1.0
    fidelity_weight: float = 1.0
    energy_weight: float = 0.0
    paired_weight: float = 0.0
    observation_noise_std: float = 0.0
    num_perturbed_samples: int = 4
    include_dataset_action: bool = True
    teacher_num_inference_steps: int = 10
    teacher_ode_solver: str = "heun"
    teacher_cache_path: str | None = None
    perturbed_cache_path: str | None = None
    init_from_teacher: bool = True
    extra_generator_blocks: int = 0
    num_inference_candidates: int = 16
    candidate_selection: str = "consistency"
    # An RTCConfig or None. A class attribute, not a field: lerobot-rollout assigns it on the loaded config, and
    # naming RTCConfig here would import all of `lerobot.policies` (every policy's modeling code) whenever a
    # config is parsed; draccus must resolve every annotation of the class, hence `Any`.
    rtc_config: ClassVar[Any] = None

    def __post_init__(self) -> None:
        if self.objective != "imle":
            raise ValueError(
                f"imle_student has no objective '{self.objective}'. The regression baseline is its own policy type: "
                "--policy.type=flowstep_regression (for a checkpoint saved with objective=regression, set "
                '"type": "flowstep_regression" in its config.json and delete the fields that '
                "FlowstepRegressionConfig lacks, which are the student's own)."
            )
        if self.candidate_selection not in CANDIDATE_RULES:
            raise ValueError(f"candidate_selection must be one of {CANDIDATE_RULES}, got '{self.candidate_selection}'.")
        if self.teacher_ode_solver not in SOLVERS:
            raise ValueError(f"teacher_ode_solver must be one of {SOLVERS}, got '{self.teacher_ode_solver}'.")
        for name in ("coverage_weight", "fidelity_weight", "energy_weight", "paired_weight", "observation_noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.energy_weight > 0 and self.num_student_samples < 2:
            raise ValueError(
                f"energy_weight={self.energy_weight} needs num_student_samples >= 2 (the energy score compares "
                f"the student's samples with each other), got {self.num_student_samples}."
            )
        if self.extra_generator_blocks < 0:
            raise ValueError(f"extra_generator_blocks must be >= 0, got {self.extra_generator_blocks}.")
        for name in (
            "num_teacher_samples",
            "num_student_samples",
            "num_candidate_sets",
            "num_inference_candidates",
            "num_perturbed_samples",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.paired_weight > 0 and (
            self.num_student_samples != self.num_teacher_samples or self.num_candidate_sets != 1
        ):
            raise ValueError(
                f"paired_weight={self.paired_weight} feeds the student the latents of the teacher's samples, one "
                f"each: it needs num_student_samples == num_teacher_samples and num_candidate_sets == 1, got "
                f"{self.num_student_samples}, {self.num_teacher_samples} and {self.num_candidate_sets}."
            )
        if self.observation_noise_std > 0 and self.paired_weight == 0:
            raise ValueError(
                f"observation_noise_std={self.observation_noise_std} regresses the student onto teacher chunks drawn "
                "from the same latents at perturbed observations, a paired term: set paired_weight > 0."
            )
        if self.perturbed_cache_path and self.observation_noise_std == 0:
            raise ValueError(
                f"perturbed_cache_path={self.perturbed_cache_path} holds the teacher's chunks at perturbed "
                "observations for observation_noise_std's term: set --policy.observation_noise_std to the noise the "
                "cache was drawn with (and paired_weight > 0)."
            )
        # Here, not when the policy is built: lerobot-train resolves the dataset's delta_timestamps from
        # horizon and n_obs_steps before any policy exists, so they must be the teacher's by then.
        if self.teacher_path and self.inherit_teacher_config and not self.teacher_config_inherited:
            teacher = load_teacher_config(self.teacher_path)
            for name in INHERITED_FIELDS:
                if name == "input_features" and not teacher.input_features:
                    continue  # a teacher config saved before features were known leaves them to the dataset
                if name == "input_features" and self.input_features:
                    check_given_input_features(self.input_features, teacher, self.teacher_path)
                setattr(self, name, copy.deepcopy(getattr(teacher, name)))
            self.teacher_config_inherited = True
        if self.extra_generator_blocks and self.network.type != "mlp":
            raise ValueError(
                f"extra_generator_blocks={self.extra_generator_blocks} adds residual blocks to an MLP generator; "
                f"this student's network is a '{self.network.type}'."
            )
        super().__post_init__()


def check_given_input_features(given: dict, teacher: PreTrainedConfig, teacher_path: str) -> None:
    """A student sees its teacher's inputs: input features given to it (a Python caller's, or LeRobot's tests')
    must be the teacher's, not be replaced by them without a word. lerobot-train gives none here (it fills
    them from the dataset only when the config has none), so the teacher's subset of the dataset is kept."""

    def described(features: dict) -> dict:
        return {k: (v.type.value, tuple(v.shape)) for k, v in features.items()}

    expected = dict(teacher.input_features)
    if teacher.pointcloud.enabled and OBS_POINTCLOUD not in given:
        expected.pop(OBS_POINTCLOUD, None)  # the point-cloud step adds it when the policy is built
    if described(given) != described(expected):
        raise ValueError(
            f"The input_features given to this student {described(given)} differ from its teacher's "
            f"{described(expected)} ('{teacher_path}'): a student sees what its teacher saw. Give the teacher's "
            "features, none (they are then copied), or set inherit_teacher_config=false."
        )


def check_teacher_compatibility(student: ImleStudentConfig, teacher: PreTrainedConfig) -> None:
    """Fail at start-up, naming both sides, when the teacher's samples could not be the student's targets."""
    problems = []
    if teacher.action_feature is not None and student.action_feature is not None:
        if tuple(teacher.action_feature.shape) != tuple(student.action_feature.shape):
            problems.append(
                f"action shape: teacher {tuple(teacher.action_feature.shape)} vs student/dataset "
                f"{tuple(student.action_feature.shape)}"
            )
    for name in ("horizon", "n_obs_steps"):
        if getattr(teacher, name) != getattr(student, name):
            problems.append(f"{name}: teacher {getattr(teacher, name)} vs student {getattr(student, name)}")
    teacher_inputs = {k: tuple(v.shape) for k, v in teacher.input_features.items()}
    student_inputs = {k: tuple(v.shape) for k, v in student.input_features.items()}
    if teacher_inputs != student_inputs:
        problems.append(f"input features: teacher {teacher_inputs} vs student/dataset {student_inputs}")
    if problems:
        raise ValueError(
            f"The teacher '{student.teacher_path}' does not match this student:\n  " + "\n  ".join(problems)
        )
