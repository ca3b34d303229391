"""`--teleop.type=flowstep_obstacle_expert`: the embedded task's scripted expert as a LeRobot teleoperator."""

from __future__ import annotations

from dataclasses import dataclass

from lerobot.teleoperators import TeleoperatorConfig

from lerobot_flowstep.teleoperators.common import ScriptedOperatorConfig

TELEOP_TYPE = "flowstep_obstacle_expert"


@TeleoperatorConfig.register_subclass(TELEOP_TYPE)
@dataclass(kw_only=True)
class FlowstepObstacleExpertConfig(ScriptedOperatorConfig):
    """The operator of a `flowstep_obstacle_sim` robot of the same command: it watches the robot's scene and
    drives the agent along a smooth path past the obstacles, on a side drawn at random for each scene."""

    # Seed of the side drawn for each scene (and of the path's jitter); None draws them afresh.
    seed: int | None = 0
