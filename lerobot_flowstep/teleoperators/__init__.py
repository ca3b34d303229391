"""Scripted teleoperators for LeRobot's robot runtime.

Importing this package registers `--teleop.type=flowstep_obstacle_expert` (`obstacle_expert/`, the embedded task's
expert driving a `flowstep_obstacle_sim` robot) and `--teleop.type=flowstep_metaworld_expert` (`metaworld_expert/`,
MetaWorld's scripted policy driving a `flowstep_metaworld_sim` robot), so that `lerobot-record` records
demonstrations with them. Both are `ScriptedOperator`s (`common/`).
"""

from lerobot_flowstep.teleoperators.metaworld_expert import FlowstepMetaworldExpert, FlowstepMetaworldExpertConfig
from lerobot_flowstep.teleoperators.obstacle_expert import FlowstepObstacleExpert, FlowstepObstacleExpertConfig

__all__ = [
    "FlowstepMetaworldExpert",
    "FlowstepMetaworldExpertConfig",
    "FlowstepObstacleExpert",
    "FlowstepObstacleExpertConfig",
]
