"""Configuration of the Conditional Flow Matching teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from lerobot.configs import PreTrainedConfig

from lerobot_flowstep.core.config_errors import command_line_errors
from lerobot_flowstep.core.flow_matching import SOLVERS, TIME_SAMPLINGS
from lerobot_flowstep.policies.common.config_base import FlowstepBaseConfig


@PreTrainedConfig.register_subclass("flowstep_teacher")
@command_line_errors
@dataclass
class FlowstepTeacherConfig(FlowstepBaseConfig):
    """CFM teacher: a velocity network on normalized action chunks, sampled by ODE integration.

    Args:
    num_inference_steps: ODE steps per chunk at inference (1 gives the naive one-step CFM baseline).
    ode_solver: "euler" (1 network call per step), "midpoint" or "heun" (second order, 2 calls per step).
    time_sampling: distribution of flow times during training, "uniform" or "logit_normal".
    rtc_config: real-time chunking settings (LeRobot's `RTCConfig`), which `lerobot-rollout --inference.type=rtc`
        sets from `--inference.rtc.*`, as for pi0. A deployment setting, not saved with the checkpoint; a direct
        `predict_action_chunk` call with `prev_chunk_left_over` and none set uses LeRobot's defaults.
        `enabled=false` ignores the left-over.
    """

    num_inference_steps: int = 10
    ode_solver: str = "euler"
    time_sampling: str = "uniform"
    # An RTCConfig or None. A class attribute, not a field: lerobot-rollout assigns it on the loaded config, and
    # naming RTCConfig here would import all of `lerobot.policies` (every policy's modeling code) whenever a
    # config is parsed; draccus must resolve every annotation of the class, hence `Any`.
    rtc_config: ClassVar[Any] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ode_solver not in SOLVERS:
            raise ValueError(f"ode_solver must be one of {SOLVERS}, got '{self.ode_solver}'.")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got '{self.time_sampling}'.")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}.")
