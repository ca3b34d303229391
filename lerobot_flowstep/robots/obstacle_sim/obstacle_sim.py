"""The embedded ObstacleReach task as a LeRobot `Robot` (`SimRobot`: the real-time schedule, the RGB-D camera as a
RealSense gives it, its calibration files, the report and the injected faults).

Observation (`observation_features`):
- `agent_x.pos`, `agent_y.pos` (and `goal_x.pos`, `goal_y.pos` with `observe_goal`): floats. LeRobot's rollout
  keeps only `.pos` / `.vel` scalars as state, hence the names.
- `<camera>`: (H, W, 3) uint8 RGB; `<camera>_depth`: (H, W, 1) uint16 millimetres along the optical axis.
Action: `agent_x.pos`, `agent_y.pos`, the absolute target the agent moves to by at most one step per period.

A late action: the agent has meanwhile kept moving towards the previous target, one step per period that
passed, as a position-controlled robot would. The report adds each scene's collision and mode (the side it took
past the obstacles).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lerobot_flowstep.envs.expert import OFF_MANIFOLD, classify_trajectory
from lerobot_flowstep.envs.obstacle import CAMERA_NAME, ObstacleLayout, ObstacleReachEnv, ObstacleRenderer
from lerobot_flowstep.robots.common.sim_robot import SceneRecord, SimRobot
from lerobot_flowstep.robots.common.sim_robot import connected_robot as connected_sim_robot
from lerobot_flowstep.robots.obstacle_sim.config_obstacle_sim import ROBOT_TYPE, FlowstepObstacleSimConfig

AGENT_KEYS = ("agent_x.pos", "agent_y.pos")
GOAL_KEYS = ("goal_x.pos", "goal_y.pos")


def connected_robot(robot_id: str | None = None) -> FlowstepObstacleSim:
    """The connected `flowstep_obstacle_sim` robot of this process with this id (None: the only one)."""
    return connected_sim_robot(FlowstepObstacleSim, robot_id)


@dataclass
class _Scene(SceneRecord):
    """Where the agent went (for its mode) and whether it hit an obstacle."""

    positions: list[np.ndarray] = field(default_factory=list)
    collision: bool = False


class FlowstepObstacleSim(SimRobot[np.ndarray]):
    """See the module docstring."""

    config_class = FlowstepObstacleSimConfig
    name = ROBOT_TYPE

    def __init__(self, config: FlowstepObstacleSimConfig) -> None:
        super().__init__(config)
        self.config: FlowstepObstacleSimConfig = config
        self._env: ObstacleReachEnv | None = None
        self._env_obs: dict[str, Any] = {}

    # --- features ---------------------------------------------------------------------------------------------

    @property
    def state_features(self) -> tuple[str, ...]:
        return AGENT_KEYS + (GOAL_KEYS if self.config.observe_goal else ())

    @property
    def action_features(self) -> dict[str, type]:
        return dict.fromkeys(AGENT_KEYS, float)

    def _camera_parameters(self) -> dict[str, list[list[float]]]:
        renderer = ObstacleRenderer(ObstacleLayout.preset(self.config.num_modes), self.config.image_size)
        return {
            "intrinsics": renderer.intrinsics.astype(float).tolist(),
            "camera_to_world": renderer.extrinsics.astype(float).tolist(),
        }

    # --- the env ----------------------------------------------------------------------------------------------

    @property
    def _env_open(self) -> bool:
        return self._env is not None

    def _open_env(self) -> None:
        self._env = ObstacleReachEnv(
            self.config.num_modes,
            camera=True,
            image_size=self.config.image_size,
            max_episode_steps=None,
            render_mode=None,
        )
        self._env_obs, _ = self._env.reset(seed=self.config.seed)

    def _close_env(self) -> None:
        self._env = None

    def _next_scene(self, scene_index: int) -> None:
        # The scenes after the first follow from the first one's seed.
        self._env_obs, _ = self._env.reset()

    def _new_record(self) -> _Scene:
        return _Scene(positions=[np.asarray(self._env_obs["agent_pos"], dtype=np.float64)])

    def _state(self) -> dict[str, float]:
        values = [*self._env_obs["agent_pos"], *self._env_obs["environment_state"][:2]]
        return {key: float(v) for key, v in zip(self.state_features, values, strict=False)}

    def _camera_frame(self) -> tuple[np.ndarray, np.ndarray]:
        return self._env_obs["pixels"][CAMERA_NAME], self._env_obs[f"depth.{CAMERA_NAME}"][0]

    def expert_view(self) -> dict[str, np.ndarray]:
        """The scene as the scripted operator sees it (agent position, then goal and obstacles, as the env)."""
        self._check_connected()
        return {"agent_pos": self._env_obs["agent_pos"], "environment_state": self._env_obs["environment_state"]}

    # --- actions ----------------------------------------------------------------------------------------------

    def _parse_action(self, action: dict[str, Any]) -> tuple[np.ndarray, bool]:
        missing = [key for key in AGENT_KEYS if key not in action]
        # LeRobot's rollout returns a robot to its start by sending every `.pos` of the observation, goal included.
        unknown = [key for key in action if key not in AGENT_KEYS and key not in self.state_features]
        if missing or unknown:
            raise ValueError(
                f"{self} takes the action keys {list(AGENT_KEYS)}; missing {missing}, unknown {unknown} in "
                f"{sorted(action)}."
            )
        target = np.array([float(action[key]) for key in AGENT_KEYS])
        if not np.all(np.isfinite(target)):
            raise ValueError(f"{self} got a non-finite action {dict(zip(AGENT_KEYS, target, strict=True))}.")
        half = self._env.layout.workspace_half_extent
        # The return to start is an absolute target like the loop's own actions, and is timed as they are.
        return np.clip(target, -half, half), True

    def _held(self, command: np.ndarray) -> np.ndarray:
        # A position-controlled agent keeps tracking the previous target.
        return command

    def _step(self, command: np.ndarray) -> None:
        self._env_obs, _, terminated, _, info = self._env.step(command)
        self._scene.positions.append(np.asarray(self._env_obs["agent_pos"], dtype=np.float64))
        if terminated:
            self._scene.done = True
            self._scene.success = bool(info["is_success"])
            self._scene.collision = bool(info["collision"])

    def _sent(self, command: np.ndarray) -> dict[str, Any]:
        return dict(zip(AGENT_KEYS, command.tolist(), strict=True))

    def _task_report(self, scenes: list[_Scene]) -> dict[str, Any]:
        layout = ObstacleLayout.preset(self.config.num_modes)
        modes = [int(classify_trajectory(np.stack(s.positions), layout)) for s in scenes if len(s.positions) > 1]
        return {
            "collisions": sum(s.collision for s in scenes),
            "modes": modes,
            "modes_covered": len({m for m in modes if m != OFF_MANIFOLD}),
        }
