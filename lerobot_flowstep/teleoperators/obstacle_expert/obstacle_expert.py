"""The scripted expert of the embedded task (`lerobot_flowstep.envs.expert.ScriptedExpert`) as a LeRobot
`Teleoperator` of the simulated robot `flowstep_obstacle_sim` (see `ScriptedOperator`). It plans a new path
whenever the robot draws a new scene.
"""

from __future__ import annotations

from lerobot_flowstep.envs.expert import ScriptedExpert
from lerobot_flowstep.envs.obstacle import ObstacleLayout
from lerobot_flowstep.robots.obstacle_sim import FlowstepObstacleSim
from lerobot_flowstep.robots.obstacle_sim.obstacle_sim import AGENT_KEYS
from lerobot_flowstep.teleoperators.common import ScriptedOperator
from lerobot_flowstep.teleoperators.obstacle_expert.config_obstacle_expert import (
    TELEOP_TYPE,
    FlowstepObstacleExpertConfig,
)


class FlowstepObstacleExpert(ScriptedOperator[FlowstepObstacleSim]):
    """See the module docstring."""

    config_class = FlowstepObstacleExpertConfig
    name = TELEOP_TYPE
    robot_class = FlowstepObstacleSim

    def __init__(self, config: FlowstepObstacleExpertConfig) -> None:
        super().__init__(config)
        self.config: FlowstepObstacleExpertConfig = config
        self._expert: ScriptedExpert | None = None
        self._planned_scene: int | None = None

    @property
    def action_features(self) -> dict[str, type]:
        return dict.fromkeys(AGENT_KEYS, float)

    def _act(self, robot: FlowstepObstacleSim, new_robot: bool) -> dict[str, float]:
        if new_robot or self._expert is None:
            self._expert = ScriptedExpert(ObstacleLayout.preset(robot.config.num_modes), seed=self.config.seed)
            self._planned_scene = None
        view = robot.expert_view()
        if self._planned_scene != robot.scene_index:
            self._expert.reset(view)
            self._planned_scene = robot.scene_index
        return dict(zip(AGENT_KEYS, map(float, self._expert.act(view)), strict=True))
