from lerobot_flowstep.teleoperators.obstacle_expert.config_obstacle_expert import (
    TELEOP_TYPE,
    FlowstepObstacleExpertConfig,
)
from lerobot_flowstep.teleoperators.obstacle_expert.obstacle_expert import FlowstepObstacleExpert

__all__ = ["TELEOP_TYPE", "FlowstepObstacleExpert", "FlowstepObstacleExpertConfig"]
