"""`--teleop.type=flowstep_metaworld_expert`: MetaWorld's scripted expert as a LeRobot teleoperator."""

from __future__ import annotations

from dataclasses import dataclass

from lerobot.teleoperators import TeleoperatorConfig

from lerobot_flowstep.teleoperators.common import ScriptedOperatorConfig

TELEOP_TYPE = "flowstep_metaworld_expert"


@TeleoperatorConfig.register_subclass(TELEOP_TYPE)
@dataclass(kw_only=True)
class FlowstepMetaworldExpertConfig(ScriptedOperatorConfig):
    """The operator of a `flowstep_metaworld_sim` robot of the same command: MetaWorld's scripted policy for the
    robot's task, on the robot's current scene (it is deterministic: nothing to seed)."""
