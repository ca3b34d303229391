from lerobot_flowstep.robots.obstacle_sim.config_obstacle_sim import ROBOT_TYPE, FlowstepObstacleSimConfig
from lerobot_flowstep.robots.obstacle_sim.obstacle_sim import FlowstepObstacleSim, connected_robot

__all__ = ["ROBOT_TYPE", "FlowstepObstacleSim", "FlowstepObstacleSimConfig", "connected_robot"]
