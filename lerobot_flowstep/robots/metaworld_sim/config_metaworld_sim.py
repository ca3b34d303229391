"""`--robot.type=flowstep_metaworld_sim`: a MetaWorld task as a LeRobot robot with an RGB-D camera."""

from __future__ import annotations

from dataclasses import dataclass

from lerobot.robots import RobotConfig

from lerobot_flowstep.metaworld.env import DEFAULT_CAMERAS
from lerobot_flowstep.metaworld.tasks import metaworld_task
from lerobot_flowstep.robots.common.config_sim_robot import SimRobotConfig

ROBOT_TYPE = "flowstep_metaworld_sim"


@RobotConfig.register_subclass(ROBOT_TYPE)
@dataclass(kw_only=True)
class FlowstepMetaworldSimConfig(SimRobotConfig):
    """A MetaWorld task on the simulated robots' real-time schedule (see `SimRobotConfig`).

    Each action is one MetaWorld step (12.5 ms of simulated time, MetaWorld's 80 Hz); the robot is driven at
    `fps` by the wall clock, so at 30 fps the scene moves at 30/80 of its simulated speed, as a policy trained on
    MetaWorld's steps expects. A scene ends at MetaWorld's success or its own cap of 500 steps; the arm then
    holds still until the live phase ends.
    """

    # The MetaWorld task (`button-press-v3`; LeRobot's `metaworld-button-press-v3` is accepted).
    task: str = "button-press-v3"
    # The camera: DP3's and LeRobot's corner2, the whole table from the front and above.
    camera: str = DEFAULT_CAMERAS[0]
    # As the `flowstep_metaworld` env and its demos (`lerobot-flowstep generate metaworld`).
    image_size: int = 128
    # MetaWorld's experts need 47-123 steps: 150 at 30 fps.
    episode_time_s: float = 5.0
    # Scene k is the env's scene of seed `seed + k` (`lerobot-flowstep generate metaworld` numbers its episodes'
    # scenes the same way): roll out with another seed than the demos were recorded with to test on new scenes.

    def __post_init__(self) -> None:
        super().__post_init__()
        self.task = metaworld_task(self.task).name  # an unknown task is named, with the known ones, at once
