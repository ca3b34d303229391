"""Configuration of the regression baseline: the student's network trained on the dataset's chunks by L2."""

from __future__ import annotations

from dataclasses import dataclass

from lerobot.configs import PreTrainedConfig

from lerobot_flowstep.policies.common.config_base import FlowstepBaseConfig


@PreTrainedConfig.register_subclass("flowstep_regression")
@dataclass
class FlowstepRegressionConfig(FlowstepBaseConfig):
    """The deterministic one-step baseline the paper compares against: the same encoder and chunk network as
    the IMLE student, fed a zero latent and trained by masked L2 on the dataset's chunks. It needs no teacher,
    and on multi-modal demonstrations it predicts their mean, which is what it is there to show."""
