"""The preprocessor and postprocessor pipelines of the flowstep policies.

Preprocessor: rename -> add batch dim -> device -> LeRobot depth maps to metric depth -> point cloud (metric
depth in, before normalization) -> normalize. Postprocessor: unnormalize actions -> cpu. Depth, camera parameters
and point clouds are left unnormalized; the point cloud is made on the policy's device.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from lerobot.processor import (
    NormalizerProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    make_default_policy_processor_steps,
)
from lerobot.processor.factory import make_policy_processor_pipelines

from lerobot_flowstep.policies.common.config_base import FlowstepBaseConfig
from lerobot_flowstep.processor.depth_maps import DepthMapProcessorStep, check_depth_unit
from lerobot_flowstep.processor.pointcloud import PointCloudProcessorStep


def make_flowstep_pre_post_processors(
    config: FlowstepBaseConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    steps = make_default_policy_processor_steps(config, dataset_stats)
    normalize = NormalizerProcessorStep(
        features={**config.normalized_input_features, **config.output_features},
        norm_map=config.normalization_mapping,
        stats=dataset_stats,
    )
    input_steps = [steps.rename_observations, steps.add_batch_dim, steps.to_device]
    if config.depth_maps:
        check_depth_unit(config.depth_maps, config.depth_unit, dataset_stats)
        input_steps.append(DepthMapProcessorStep(depth_maps=dict(config.depth_maps), depth_unit=config.depth_unit))
    if config.pointcloud.enabled:
        input_steps.append(PointCloudProcessorStep(**asdict(config.pointcloud)))
    input_steps.append(normalize)
    return make_policy_processor_pipelines(input_steps=input_steps, output_steps=[steps.unnormalize, steps.to_cpu])
