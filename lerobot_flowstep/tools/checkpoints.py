"""Loading a saved checkpoint the way `lerobot-eval --policy.path=...` does, for the tools and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lerobot.configs import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.processor import PolicyProcessorPipeline


def load_checkpoint(
    checkpoint: str | Path, device: str = "cpu", **overrides: Any
) -> tuple[PreTrainedPolicy, PolicyProcessorPipeline, PolicyProcessorPipeline]:
    """Policy, preprocessor and postprocessor from a checkpoint folder, with config fields overridden
    (e.g. `num_inference_steps=1`), on `device`: a checkpoint trained on a GPU is read on a CPU-only machine, and
    the reverse. Weights load strictly: a key missing or left over is an error here."""
    config = PreTrainedConfig.from_pretrained(checkpoint)
    for name, value in overrides.items():
        setattr(config, name, value)
    config.device = device
    policy = get_policy_class(config.type).from_pretrained(checkpoint, config=config, strict=True)
    preprocessor, postprocessor = load_processors(config, checkpoint, device)
    return policy, preprocessor, postprocessor


def load_processors(
    config: PreTrainedConfig, checkpoint: str | Path, device: str | torch.device
) -> tuple[PolicyProcessorPipeline, PolicyProcessorPipeline]:
    """A checkpoint's processors, the preprocessor moving batches to `device` whatever device the checkpoint
    was trained on (as `lerobot-eval` sets it)."""
    return make_pre_post_processors(
        config,
        pretrained_path=str(checkpoint),
        preprocessor_overrides={"device_processor": {"device": str(device)}},
    )
