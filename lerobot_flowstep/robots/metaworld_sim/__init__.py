from lerobot_flowstep.robots.metaworld_sim.config_metaworld_sim import ROBOT_TYPE, FlowstepMetaworldSimConfig
from lerobot_flowstep.robots.metaworld_sim.metaworld_sim import FlowstepMetaworldSim, connected_robot

__all__ = ["ROBOT_TYPE", "FlowstepMetaworldSim", "FlowstepMetaworldSimConfig", "connected_robot"]
