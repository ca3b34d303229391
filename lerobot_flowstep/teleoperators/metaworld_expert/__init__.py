from lerobot_flowstep.teleoperators.metaworld_expert.config_metaworld_expert import (
    TELEOP_TYPE,
    FlowstepMetaworldExpertConfig,
)
from lerobot_flowstep.teleoperators.metaworld_expert.metaworld_expert import FlowstepMetaworldExpert

__all__ = ["TELEOP_TYPE", "FlowstepMetaworldExpert", "FlowstepMetaworldExpertConfig"]
