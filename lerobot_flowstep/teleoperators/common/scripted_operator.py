"""What the scripted operators share: a LeRobot `Teleoperator` that drives a simulated robot of the same process.

A leader arm reads what a person does; a scripted operator reads the simulated scene, as a person looks at the
real one, through the robot of the same command (`connected_robot`). `lerobot-record` connects the teleoperator
before the robot, so the robot is looked up at the first action (and again after it reconnects).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from lerobot.teleoperators import Teleoperator, TeleoperatorConfig

from lerobot_flowstep.robots.common import SimRobot, connected_robot


@dataclass(kw_only=True)
class ScriptedOperatorConfig(TeleoperatorConfig):
    """The operator of a simulated robot of the same command."""

    # `--robot.id` of the robot to drive; None: the only one connected.
    robot_id: str | None = None


class ScriptedOperator[R: SimRobot](Teleoperator):
    """See the module docstring. A subclass names the robot class it drives and acts on it."""

    robot_class: type[R]
    config: ScriptedOperatorConfig

    def __init__(self, config: ScriptedOperatorConfig) -> None:
        super().__init__(config)
        self.config = config
        self._connected = False
        self._robot: R | None = None

    @abc.abstractmethod
    def _act(self, robot: R, new_robot: bool) -> dict[str, float]:
        """The operator's action on `robot`'s current scene; `new_robot`: first action on this robot."""

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
        new_robot = self._robot is None or not self._robot.is_connected
        if new_robot:
            self._robot = connected_robot(self.robot_class, self.config.robot_id)
        return self._act(self._robot, new_robot)

    def send_feedback(self, feedback: dict[str, Any]) -> None:
        """The scripted operator reads the scene itself and takes no feedback."""

    def disconnect(self) -> None:
        if not self._connected:
            raise RuntimeError(f"{self} is not connected.")
        self._connected = False
        self._robot = None
