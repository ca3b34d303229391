"""Scripted teleoperators for LeRobot's robot runtime.

Importing this package registers `--teleop.type=flowstep_obstacle_expert` (`obstacle_expert/`), the embedded
task's expert driving a `flowstep_obstacle_sim` robot, so that `lerobot-record` records demonstrations with it.
"""

from lerobot_flowstep.teleoperators.obstacle_expert import FlowstepObstacleExpert, FlowstepObstacleExpertConfig

__all__ = ["FlowstepObstacleExpert", "FlowstepObstacleExpertConfig"]
