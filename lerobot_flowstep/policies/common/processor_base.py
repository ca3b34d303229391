"""The preprocessor and postprocessor pipelines of the flowstep policies.

Preprocessor: rename -> add batch dim -> check the observation against training's features -> device -> LeRobot
depth maps to metric depth -> point cloud (metric depth in, before normalization) -> normalize. Postprocessor:
unnormalize actions -> cpu. Depth, camera parameters and point clouds are left unnormalized; the point cloud is made
on the policy's device.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from lerobot.configs import NormalizationMode, PolicyFeature
from lerobot.processor import (
    NormalizerProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    make_default_policy_processor_steps,
)
from lerobot.processor.factory import make_policy_processor_pipelines

from lerobot_flowstep.policies.common.config_base import FlowstepBaseConfig
from lerobot_flowstep.processor.depth_maps import DepthMapProcessorStep, check_depth_unit
from lerobot_flowstep.processor.observation_check import ObservationCheckProcessorStep, required_observation
from lerobot_flowstep.processor.pointcloud import PointCloudProcessorStep


def make_flowstep_pre_post_processors(
    config: FlowstepBaseConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    if dataset_stats is not None:
        check_normalization_stats(
            {**config.normalized_input_features, **config.output_features}, config.normalization_mapping, dataset_stats
        )
    steps = make_default_policy_processor_steps(config, dataset_stats)
    normalize = NormalizerProcessorStep(
        features={**config.normalized_input_features, **config.output_features},
        norm_map=config.normalization_mapping,
        stats=dataset_stats,
    )
    features, alternatives = required_observation(config.input_features, config.depth_maps, config.pointcloud.enabled)
    check = ObservationCheckProcessorStep(features=features, alternatives=alternatives)
    input_steps = [steps.rename_observations, steps.add_batch_dim, check, steps.to_device]
    if config.depth_maps:
        check_depth_unit(config.depth_maps, config.depth_unit, dataset_stats)
        input_steps.append(DepthMapProcessorStep(depth_maps=dict(config.depth_maps), depth_unit=config.depth_unit))
    if config.pointcloud.enabled:
        input_steps.append(PointCloudProcessorStep(**asdict(config.pointcloud)))
    input_steps.append(normalize)
    return make_policy_processor_pipelines(input_steps=input_steps, output_steps=[steps.unnormalize, steps.to_cpu])


# The (low, high) statistics each mode divides by; their difference is the scale.
_RANGE_STATS = {
    NormalizationMode.MIN_MAX: ("min", "max"),
    NormalizationMode.QUANTILES: ("q01", "q99"),
    NormalizationMode.QUANTILE10: ("q10", "q90"),
}


def check_normalization_stats(
    features: dict[str, PolicyFeature],
    norm_map: dict[str, NormalizationMode],
    stats: dict[str, dict[str, Any]],
) -> None:
    """Refuse normalization statistics that cannot describe the data, naming the feature and the dimensions.

    LeRobot divides by (high - low) or std and puts 1e-8 in place of a zero: a range that is flat (high == low)
    while the data vary (std > 0) scales them by about 1e8, which trains on with a loss near 1e16. A flat range
    with no spread is a constant dimension and is fine. Also refused: NaN or inf, an inverted range (high < low)
    and a negative std. Such stats were edited by hand or belong to other data; recompute them."""
    problems = []
    for key, feature in features.items():
        mode = norm_map.get(feature.type.value, norm_map.get(feature.type, NormalizationMode.IDENTITY))
        if mode == NormalizationMode.IDENTITY or key not in stats:
            continue
        values = {
            name: torch.as_tensor(value, dtype=torch.float64).reshape(-1)
            for name, value in stats[key].items()
            if name in ("min", "max", "mean", "std", "q01", "q99", "q10", "q90")
        }
        for name, value in values.items():
            if not bool(torch.isfinite(value).all()):
                problems.append(f"'{key}' {name} holds NaN or inf")
        low_name, high_name = _RANGE_STATS.get(mode, ("min", "max"))
        std = values.get("std")
        if std is not None and bool((std < 0).any()):
            problems.append(f"'{key}' std is negative at dims {_dims(std < 0)}")
        if low_name not in values or high_name not in values:
            continue
        low, high = values[low_name], values[high_name]
        if low.shape != high.shape:
            continue
        if bool((high < low).any()):
            problems.append(f"'{key}' {high_name} < {low_name} (inverted) at dims {_dims(high < low)}")
        scale = torch.maximum(low.abs(), high.abs()).clamp(min=1.0)
        if std is not None and std.shape == low.shape:
            spread = std > 1e-3 * scale
            if mode == NormalizationMode.MEAN_STD:
                flat = (std == 0) & (high > low)
                if bool(flat.any()):
                    problems.append(f"'{key}' std == 0 although {low_name} < {high_name} at dims {_dims(flat)}")
            else:
                flat = (high == low) & spread
                if bool(flat.any()):
                    problems.append(
                        f"'{key}' {high_name} == {low_name} although std > 0 (the data vary) at dims {_dims(flat)}: "
                        "normalization would scale them by 1e8"
                    )
    if problems:
        raise ValueError(
            "The dataset's normalization statistics (meta/stats.json) cannot describe its data:\n  "
            + "\n  ".join(problems)
            + "\nThey were edited or belong to other data: recompute them (e.g. delete meta/stats.json and convert "
            "again), or fix the values."
        )


def _dims(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().reshape(-1).tolist()[:10]
