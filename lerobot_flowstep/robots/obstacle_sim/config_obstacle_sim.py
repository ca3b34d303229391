"""`--robot.type=flowstep_obstacle_sim`: the embedded ObstacleReach task as a LeRobot robot with an RGB-D camera."""

from __future__ import annotations

from dataclasses import dataclass

from lerobot.robots import RobotConfig

from lerobot_flowstep.envs.obstacle import CAMERA_NAME
from lerobot_flowstep.robots.common.config_sim_robot import SimFaultsConfig, SimRobotConfig

ROBOT_TYPE = "flowstep_obstacle_sim"

__all__ = ["ROBOT_TYPE", "FlowstepObstacleSimConfig", "SimFaultsConfig"]


@RobotConfig.register_subclass(ROBOT_TYPE)
@dataclass(kw_only=True)
class FlowstepObstacleSimConfig(SimRobotConfig):
    """The embedded task on the simulated robots' real-time schedule (see `SimRobotConfig`). A late action: the
    agent has kept moving to the previous target meanwhile, one step per period that passed, as a real
    position-controlled robot does."""

    # Obstacles: 2 (one obstacle) or 4 (two stacked obstacles) equally good ways to the goal.
    num_modes: int = 2
    camera: str = CAMERA_NAME
    # The goal's position as state (`goal_x.pos`, `goal_y.pos`): the goal is a flat disc that depth cannot see.
    observe_goal: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_modes not in (2, 4):
            raise ValueError(f"num_modes must be 2 or 4, got {self.num_modes}.")
