"""Simulated robots for LeRobot's robot runtime (`lerobot-record`, `lerobot-rollout`, `lerobot-calibrate`).

Importing this package registers `--robot.type=flowstep_obstacle_sim` (`obstacle_sim/`). LeRobot makes the robot
from its config class by name (`make_device_from_device_class`: `FlowstepObstacleSimConfig` ->
`FlowstepObstacleSim`, found in the config module's package).
"""

from lerobot_flowstep.robots.obstacle_sim import FlowstepObstacleSim, FlowstepObstacleSimConfig

__all__ = ["FlowstepObstacleSim", "FlowstepObstacleSimConfig"]
