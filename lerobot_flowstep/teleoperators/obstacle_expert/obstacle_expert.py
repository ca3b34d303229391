"""The scripted expert of the embedded task (`lerobot_flowstep.envs.expert.ScriptedExpert`) as a LeRobot
`Teleoperator` of the simulated robot `flowstep_obstacle_sim`.

A leader arm reads what a person does; this operator reads the simulated scene, as a person looks at the real
one, through the robot of the same process (`connected_robot`). It plans a new path whenever the robot draws a new
scene. `lerobot-record` connects the teleoperator before the robot, so the robot is looked up at the first action.
"""

from __future__ import annotations

from typing import Any

from lerobot.teleoperators import Teleoperator

from lerobot_flowstep.envs.expert import ScriptedExpert
from lerobot_flowstep.envs.obstacle import ObstacleLayout
from lerobot_flowstep.robots.obstacle_sim import FlowstepObstacleSim, connected_robot
from lerobot_flowstep.robots.obstacle_sim.obstacle_sim import AGENT_KEYS
from lerobot_flowstep.teleoperators.obstacle_expert.config_obstacle_expert import (
    TELEOP_TYPE,
    FlowstepObstacleExpertConfig,
)


class FlowstepObstacleExpert(Teleoperator):
    """See the module docstring."""

    config_class = FlowstepObstacleExpertConfig
    name = TELEOP_TYPE

    def __init__(self, config: FlowstepObstacleExpertConfig) -> None:
        super().__init__(config)
        self.config = config
        self._connected = False
        self._robot: FlowstepObstacleSim | None = None
        self._expert: ScriptedExpert | None = None
        self._planned_scene: int | None = None

    @property
    def action_features(self) -> dict[str, type]:
        return dict.fromkeys(AGENT_KEYS, float)

    @property
    def feedback_features(self) -> dict[str, type]:
        return {}

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = True) -> None:
        if self._connected:
            raise RuntimeError(f"{self} is already connected.")
        self._connected = True

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        """A scripted operator has nothing to calibrate."""

    def configure(self) -> None:
        """A scripted operator has nothing to configure."""

    def get_action(self) -> dict[str, float]:
        if not self._connected:
            raise ConnectionError(f"{self} is not connected: call connect() first.")
        robot = self._robot if self._robot is not None and self._robot.is_connected else None
        if robot is None:
            robot = self._robot = connected_robot(self.config.robot_id)
            self._expert = ScriptedExpert(ObstacleLayout.preset(robot.config.num_modes), seed=self.config.seed)
            self._planned_scene = None
        view = robot.expert_view()
        if self._planned_scene != robot.scene_index:
            self._expert.reset(view)
            self._planned_scene = robot.scene_index
        return dict(zip(AGENT_KEYS, map(float, self._expert.act(view)), strict=True))

    def send_feedback(self, feedback: dict[str, Any]) -> None:
        """The scripted operator reads the scene itself and takes no feedback."""

    def disconnect(self) -> None:
        if not self._connected:
            raise RuntimeError(f"{self} is not connected.")
        self._connected = False
        self._robot = None
