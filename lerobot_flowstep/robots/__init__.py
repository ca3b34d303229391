"""Simulated robots for LeRobot's robot runtime (`lerobot-record`, `lerobot-rollout`, `lerobot-calibrate`).

Importing this package registers `--robot.type=flowstep_obstacle_sim` (`obstacle_sim/`, the embedded task) and
`--robot.type=flowstep_metaworld_sim` (`metaworld_sim/`, a MetaWorld task; MetaWorld itself is imported only when
the robot connects). Both are `SimRobot`s (`common/`). LeRobot makes a robot from its config class by name
(`make_device_from_device_class`: `FlowstepObstacleSimConfig` -> `FlowstepObstacleSim`, found in the config
module's package).
"""

from lerobot_flowstep.robots.metaworld_sim import FlowstepMetaworldSim, FlowstepMetaworldSimConfig
from lerobot_flowstep.robots.obstacle_sim import FlowstepObstacleSim, FlowstepObstacleSimConfig

__all__ = ["FlowstepMetaworldSim", "FlowstepMetaworldSimConfig", "FlowstepObstacleSim", "FlowstepObstacleSimConfig"]
