"""What the simulated robots share: `SimRobot` (schedule, real-time accounting, report, calibration files,
injected faults, the registry of connected robots) and its config."""

from lerobot_flowstep.robots.common.config_sim_robot import SimFaultsConfig, SimRobotConfig
from lerobot_flowstep.robots.common.sim_robot import SceneRecord, SimRobot, connected_robot

__all__ = ["SceneRecord", "SimFaultsConfig", "SimRobot", "SimRobotConfig", "connected_robot"]
