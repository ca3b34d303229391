"""Pre/post-processors of the student: the teacher's pipeline and normalization when there is a teacher."""

from __future__ import annotations

from typing import Any

import torch
from lerobot.processor import NormalizerProcessorStep, PolicyAction, PolicyProcessorPipeline

from lerobot_flowstep.policies.common.processor_base import make_flowstep_pre_post_processors
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig


def teacher_normalization_stats(teacher_path: str) -> dict[str, dict[str, torch.Tensor]]:
    """The statistics the teacher's normalizer was saved with."""
    pipeline = PolicyProcessorPipeline.from_pretrained(teacher_path, config_filename="policy_preprocessor.json")
    for step in pipeline.steps:
        if isinstance(step, NormalizerProcessorStep):
            return step.stats
    raise ValueError(f"The teacher preprocessor in '{teacher_path}' has no normalizer step.")


def make_imle_student_pre_post_processors(
    config: ImleStudentConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    # Teacher samples live in the teacher's normalized action space; the student must share it.
    stats = teacher_normalization_stats(config.teacher_path) if config.teacher_path else dataset_stats
    return make_flowstep_pre_post_processors(config, stats)
