"""MetaWorld's scripted policy for a task as a LeRobot `Teleoperator` of the simulated robot `flowstep_metaworld_sim`
(see `ScriptedOperator`): it reads the robot's current scene and gives MetaWorld's action for it."""

from __future__ import annotations

from lerobot_flowstep.robots.metaworld_sim import FlowstepMetaworldSim
from lerobot_flowstep.robots.metaworld_sim.metaworld_sim import ACTION_KEYS
from lerobot_flowstep.teleoperators.common import ScriptedOperator
from lerobot_flowstep.teleoperators.metaworld_expert.config_metaworld_expert import (
    TELEOP_TYPE,
    FlowstepMetaworldExpertConfig,
)


class FlowstepMetaworldExpert(ScriptedOperator[FlowstepMetaworldSim]):
    """See the module docstring."""

    config_class = FlowstepMetaworldExpertConfig
    name = TELEOP_TYPE
    robot_class = FlowstepMetaworldSim

    @property
    def action_features(self) -> dict[str, type]:
        return dict.fromkeys(ACTION_KEYS, float)

    def _act(self, robot: FlowstepMetaworldSim, new_robot: bool) -> dict[str, float]:
        # MetaWorld's policies read only the current state: no plan to keep across steps or scenes.
        return dict(zip(ACTION_KEYS, map(float, robot.expert_action()), strict=True))
