"""A MetaWorld task (`lerobot_flowstep.metaworld.env.MetaworldRGBDEnv`) as a LeRobot `Robot` (`SimRobot`: the
real-time schedule, the RGB-D camera as a RealSense gives it, its calibration files, the report and the injected
faults).

Observation (`observation_features`):
- the 13-D state of the `flowstep_metaworld` env, `STATE_NAMES` as `<name>.pos` floats (hand position, gripper
  opening, tool-centre point, finger pads): LeRobot's rollout keeps only `.pos` / `.vel` scalars as state;
- `<camera>` (corner2): (H, W, 3) uint8 RGB; `<camera>_depth`: (H, W, 1) uint16 millimetres along the optical axis
  (the background, beyond 65.535 m, saturates).

Action (`ACTION_KEYS`): MetaWorld's own 4-D action, clipped to [-1, 1] as MetaWorld clips it:
- `hand_x.vel`, `hand_y.vel`, `hand_z.vel`: the hand's displacement in this step, in cm (MetaWorld's
  `action_scale`): a velocity command, hence `.vel`;
- `gripper.pos`: the fingers' command, -1 open to 1 closed. MetaWorld calls it an effort: its finger actuators
  saturate, so the fingers go to their open end or close on what they hold, as a two-state gripper's position
  command does. `.pos`, because LeRobot's rollout sends a robot only its `.pos` / `.vel` action keys.

LeRobot's rollout returns a robot to where it started (`--return_to_initial_position`, the episodic strategy) by
sending the observation's `.pos` keys, interpolated, as an action: here the state, a pose, not MetaWorld's action.
The robot takes such a pose (any subset of the state keys holding `hand_x/y/z.pos`) as a target and moves the
hand's set-point towards it at MetaWorld's top speed (1 cm a step; the hand follows it to within its few
millimetres of tracking offset), opening the fingers if `gripper_opening.pos` is at least half open and closing
them otherwise. Such a move is not the control loop's: it is not timed or counted in the report, and the loop's
next action is timed from it. Any other action is refused, naming the keys it lacks and those that are unknown.

A late action: in each period that passed without one, the arm held still (zero displacement) with the gripper
command kept, as a real arm does when its displacement commands stop, while the scene's physics went on.

Success per scene is MetaWorld's success flag; the report adds the task and each scene's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lerobot_flowstep.metaworld.env import STATE_NAMES, MetaworldRGBDEnv
from lerobot_flowstep.robots.common.sim_robot import SceneRecord, SimRobot
from lerobot_flowstep.robots.common.sim_robot import connected_robot as connected_sim_robot
from lerobot_flowstep.robots.metaworld_sim.config_metaworld_sim import ROBOT_TYPE, FlowstepMetaworldSimConfig

STATE_KEYS = tuple(f"{name}.pos" for name in STATE_NAMES)
ACTION_KEYS = ("hand_x.vel", "hand_y.vel", "hand_z.vel", "gripper.pos")
HAND_KEYS = ("hand_x.pos", "hand_y.pos", "hand_z.pos")
GRIPPER_OPEN, GRIPPER_CLOSED = -1.0, 1.0


def connected_robot(robot_id: str | None = None) -> FlowstepMetaworldSim:
    """The connected `flowstep_metaworld_sim` robot of this process with this id (None: the only one)."""
    return connected_sim_robot(FlowstepMetaworldSim, robot_id)


@dataclass
class _Scene(SceneRecord):
    seed: int = 0


class FlowstepMetaworldSim(SimRobot[np.ndarray]):
    """See the module docstring."""

    config_class = FlowstepMetaworldSimConfig
    name = ROBOT_TYPE

    def __init__(self, config: FlowstepMetaworldSimConfig) -> None:
        super().__init__(config)
        self.config: FlowstepMetaworldSimConfig = config
        self._env: MetaworldRGBDEnv | None = None
        self._env_obs: dict[str, Any] = {}
        self._first_seed = 0
        self._scene_seed = 0

    # --- features ---------------------------------------------------------------------------------------------

    @property
    def state_features(self) -> tuple[str, ...]:
        return STATE_KEYS

    @property
    def action_features(self) -> dict[str, type]:
        return dict.fromkeys(ACTION_KEYS, float)

    def _camera_parameters(self) -> dict[str, list[list[float]]]:
        # The camera is fixed to the world: any scene of the task gives its parameters.
        env = self._env if self._env is not None else self._make_env()
        try:
            camera = self.config.camera
            return {
                "intrinsics": env.renderer.intrinsics(camera).astype(float).tolist(),
                "camera_to_world": env.renderer.extrinsics(env.unwrapped_metaworld.data, camera).astype(float).tolist(),
            }
        finally:
            if env is not self._env:
                env.close()

    # --- the env ----------------------------------------------------------------------------------------------

    def _make_env(self) -> MetaworldRGBDEnv:
        env = MetaworldRGBDEnv(
            self.config.task, cameras=[self.config.camera], image_size=self.config.image_size, render_mode=None
        )
        env.reset(seed=0)  # MuJoCo's derived quantities (the camera's pose) are computed at reset
        return env

    @property
    def _env_open(self) -> bool:
        return self._env is not None

    def _open_env(self) -> None:
        self._env = self._make_env()
        seed = self.config.seed
        # Drawn once when not given, so that every scene still has a seed the report names (and that reruns it).
        self._first_seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
        self._reset(self._first_seed)

    def _reset(self, seed: int) -> None:
        self._env_obs, _ = self._env.reset(seed=seed)
        self._scene_seed = seed

    def _close_env(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            env.close()

    def _next_scene(self, scene_index: int) -> None:
        self._reset(self._first_seed + scene_index)

    def _new_record(self) -> _Scene:
        return _Scene(seed=self._scene_seed)

    def _state(self) -> dict[str, float]:
        return {key: float(v) for key, v in zip(STATE_KEYS, self._env_obs["agent_pos"], strict=True)}

    def _camera_frame(self) -> tuple[np.ndarray, np.ndarray]:
        camera = self.config.camera
        return self._env_obs["pixels"][camera], self._env_obs[f"depth.{camera}"][0]

    def expert_action(self) -> np.ndarray:
        """MetaWorld's scripted policy on the current scene (what the scripted operator sends)."""
        self._check_connected()
        return self._env.expert_action()

    # --- actions ----------------------------------------------------------------------------------------------

    def _parse_action(self, action: dict[str, Any]) -> tuple[np.ndarray, bool]:
        keys = set(action)
        if keys and keys <= set(STATE_KEYS) and set(HAND_KEYS) <= keys:
            return self._towards_pose(action), False
        missing = [key for key in ACTION_KEYS if key not in action]
        unknown = sorted(keys - set(ACTION_KEYS))
        if missing or unknown:
            raise ValueError(
                f"{self.name} takes the action keys {list(ACTION_KEYS)} (MetaWorld's hand displacement per step in "
                f"[-1, 1] cm and gripper command, -1 open to 1 closed), or a pose of its state keys holding "
                f"{list(HAND_KEYS)} to move the hand to (LeRobot's return to the start); missing {missing}, "
                f"unknown {unknown} in {sorted(action)}."
            )
        command = self._finite(action, ACTION_KEYS)
        return np.clip(command, -1.0, 1.0), True

    def _finite(self, action: dict[str, Any], keys: tuple[str, ...]) -> np.ndarray:
        values = np.array([float(action[key]) for key in keys])
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{self.name} got a non-finite action {dict(zip(keys, values.tolist(), strict=True))}.")
        return values

    def _towards_pose(self, pose: dict[str, Any]) -> np.ndarray:
        """The step that moves the hand towards `pose` (state keys) at MetaWorld's top speed."""
        target = self._finite(pose, HAND_KEYS)
        metaworld = self._env.unwrapped_metaworld
        # Towards the hand's set-point (MetaWorld's mocap), which the hand lags by up to centimetres while moving:
        # steering by the hand itself would overshoot and oscillate.
        setpoint = np.asarray(metaworld.data.mocap_pos[0], dtype=np.float64)
        displacement = np.clip((target - setpoint) / metaworld.action_scale, -1.0, 1.0)
        if "gripper_opening.pos" in pose:
            opening = self._finite(pose, ("gripper_opening.pos",))[0]
            gripper = GRIPPER_OPEN if opening >= 0.5 else GRIPPER_CLOSED
        else:
            gripper = self._command[3] if self._command is not None else GRIPPER_OPEN
        return np.array([*displacement, gripper])

    def _held(self, command: np.ndarray) -> np.ndarray:
        # Displacement commands stop: the arm holds still; the gripper keeps its command (it keeps its grip).
        return np.array([0.0, 0.0, 0.0, command[3]])

    def _step(self, command: np.ndarray) -> None:
        self._env_obs, _, terminated, truncated, info = self._env.step(command.astype(np.float32))
        if terminated:  # MetaWorld's success
            self._scene.done = self._scene.success = bool(info["is_success"])
        if truncated:  # MetaWorld's cap of 500 steps: it must not be stepped again before a reset
            self._scene.done = True

    def _sent(self, command: np.ndarray) -> dict[str, Any]:
        return dict(zip(ACTION_KEYS, command.tolist(), strict=True))

    def _task_report(self, scenes: list[_Scene]) -> dict[str, Any]:
        return {"task": self.config.task, "seeds": [s.seed for s in scenes]}
