"""The embedded ObstacleReach task as a LeRobot `Robot`: joint-like state plus an RGB-D camera given the way a
RealSense gives it, in real time.

Observation (`observation_features`):
- `agent_x.pos`, `agent_y.pos` (and `goal_x.pos`, `goal_y.pos` with `observe_goal`): floats. LeRobot's rollout
  keeps only `.pos` / `.vel` scalars as state, hence the names.
- `<camera>`: (H, W, 3) uint8 RGB; `<camera>_depth`: (H, W, 1) uint16 millimetres along the optical axis.
  `lerobot-record` stores the latter as a depth map (`info.is_depth_map`, `depth_unit: mm`).
Action: `agent_x.pos`, `agent_y.pos`, the absolute target the agent moves to by at most one step per period.

Calibration: LeRobot records no camera parameters. `connect()` (or `lerobot-calibrate`) writes the camera's
intrinsics and camera-to-world extrinsics as JSON to `calibration_dir/<id>_<camera>_camera.json`, a file that
`lerobot-flowstep calibrate --calibration-file` reads into a recorded dataset.

Real time: `send_action` measures the wall time since the previous action. One later than the period (plus
`overrun_tolerance`) is an overrun; the agent has meanwhile kept moving towards the previous target, one step per
period that passed, as a position-controlled robot would. It also measures the time since the observation was
handed out: what the control loop spent between them (pre-processing, the policy, post-processing), which is the
inference time as the robot sees it. `report()` (written to `report_path` on disconnect) gives the scenes, their
success and mode, the control rate achieved, the share of overruns and those times.

A scripted operator (`lerobot_flowstep.teleoperators.obstacle_expert`) watches a robot of the same process
through `connected_robot`, as a person watches the real scene.

Faults (`config.faults`, a test rig): a lost link or a camera with no frame at a given step of a scene, raised
from `get_observation` / `send_action` as a real robot's are; `report()` then says where each struck and how many
actions were sent after it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from lerobot.robots import Robot
from lerobot.utils.errors import DeviceNotConnectedError

from lerobot_flowstep.datasets.calibration import write_json_atomic
from lerobot_flowstep.envs.expert import OFF_MANIFOLD, classify_trajectory
from lerobot_flowstep.envs.obstacle import CAMERA_NAME, ObstacleLayout, ObstacleReachEnv, ObstacleRenderer
from lerobot_flowstep.robots.obstacle_sim.config_obstacle_sim import ROBOT_TYPE, FlowstepObstacleSimConfig

logger = logging.getLogger(__name__)

AGENT_KEYS = ("agent_x.pos", "agent_y.pos")
GOAL_KEYS = ("goal_x.pos", "goal_y.pos")
# uint16 millimetres, the format of a RealSense depth stream (0 = no return).
DEPTH_SCALE_MM = 1000.0
MAX_DEPTH_MM = np.iinfo(np.uint16).max

# The robots of this process, by id, so that a scripted operator can watch one (see the module docstring).
_CONNECTED: dict[str | None, FlowstepObstacleSim] = {}


def connected_robot(robot_id: str | None) -> FlowstepObstacleSim:
    """The connected `flowstep_obstacle_sim` robot of this process with this id (None: the only one)."""
    if robot_id in _CONNECTED:
        return _CONNECTED[robot_id]
    if robot_id is None and len(_CONNECTED) == 1:
        return next(iter(_CONNECTED.values()))
    raise ConnectionError(
        f"No connected {ROBOT_TYPE} robot with id {robot_id!r} in this process (connected: "
        f"{sorted(map(str, _CONNECTED)) or 'none'}). The scripted operator drives a simulated robot of the same "
        "command: give it --robot.type=flowstep_obstacle_sim, and --teleop.robot_id=<the robot's --robot.id> "
        "when there are several."
    )


@dataclass
class _Scene:
    """One scene's live phase: where the agent went and how it ended."""

    positions: list[np.ndarray] = field(default_factory=list)
    success: bool = False
    collision: bool = False
    done: bool = False


class FlowstepObstacleSim(Robot):
    """See the module docstring."""

    config_class = FlowstepObstacleSimConfig
    name = ROBOT_TYPE

    def __init__(self, config: FlowstepObstacleSimConfig) -> None:
        super().__init__(config)
        self.config = config
        self.period = 1.0 / config.fps
        self.cameras = dict.fromkeys(self.camera_names, "simulated RGB-D")
        self._env: ObstacleReachEnv | None = None
        self._env_obs: dict[str, Any] = {}
        self._phase: str | None = None  # None before the first tick, then "live" or "reset"
        self._phase_start = 0.0
        self._scene = _Scene()
        self._scene_index = 0
        self._target: np.ndarray | None = None
        self._last_action_t: float | None = None
        self._finished: list[_Scene] = []
        self._intervals: list[float] = []
        self._overruns = 0
        self._late_steps = 0
        self._actions = 0
        self._observed_t: float | None = None
        self._decision_times: list[float] = []
        # Injected faults (config.faults): steps of the faulty scene's live phase, where each fault struck.
        self._fault_steps = 0
        self._link_lost_at: int | None = None
        self._frame_dropped_at: int | None = None
        self._actions_after_fault = 0

    # --- features ---------------------------------------------------------------------------------------------

    @property
    def _state_keys(self) -> tuple[str, ...]:
        return AGENT_KEYS + (GOAL_KEYS if self.config.observe_goal else ())

    @property
    def camera_names(self) -> tuple[str, ...]:
        """The camera, then the load-test views (`extra_cameras`)."""
        camera = self.config.camera
        return (camera, *(f"{camera}_{i}" for i in range(2, self.config.extra_cameras + 2)))

    @property
    def observation_features(self) -> dict[str, type | tuple[int, int, int]]:
        size = self.config.image_size
        features: dict[str, type | tuple[int, int, int]] = dict.fromkeys(self._state_keys, float)
        for camera in self.camera_names:
            features |= {camera: (size, size, 3), f"{camera}_depth": (size, size, 1)}
        return features

    @property
    def action_features(self) -> dict[str, type]:
        return dict.fromkeys(AGENT_KEYS, float)

    # --- calibration ------------------------------------------------------------------------------------------

    @cached_property
    def camera_calibration(self) -> dict[str, dict[str, list[list[float]]]]:
        """{camera: {"intrinsics": 3x3 OpenCV pinhole, "camera_to_world": 4x4 in OpenCV axes}}."""
        renderer = ObstacleRenderer(ObstacleLayout.preset(self.config.num_modes), self.config.image_size)
        calibration = {
            "intrinsics": renderer.intrinsics.astype(float).tolist(),
            "camera_to_world": renderer.extrinsics.astype(float).tolist(),
        }
        return dict.fromkeys(self.camera_names, calibration)

    def camera_calibration_path(self, camera: str | None = None) -> Path:
        """The JSON file `calibrate()` writes for `camera`, in the format `lerobot-flowstep calibrate` reads."""
        return self.calibration_dir / f"{self.id or self.name}_{camera or self.config.camera}_camera.json"

    @property
    def is_calibrated(self) -> bool:
        for camera, calibration in self.camera_calibration.items():
            path = self.camera_calibration_path(camera)
            if not path.is_file() or json.loads(path.read_text()) != calibration:
                return False
        return True

    def calibrate(self) -> None:
        for camera, calibration in self.camera_calibration.items():
            path = self.camera_calibration_path(camera)
            write_json_atomic(path, calibration)
            logger.info("%s: calibration of camera '%s' written to %s", self, camera, path)

    def configure(self) -> None:
        """Nothing to configure on a simulated robot."""

    # --- connection -------------------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._env is not None

    def connect(self, calibrate: bool = True) -> None:
        if self.is_connected:
            raise RuntimeError(f"{self} is already connected.")
        if self.id in _CONNECTED:
            raise RuntimeError(f"A {self.name} robot with id {self.id!r} is already connected in this process.")
        if calibrate and not self.is_calibrated:
            self.calibrate()
        self._env = ObstacleReachEnv(
            self.config.num_modes,
            camera=True,
            image_size=self.config.image_size,
            max_episode_steps=None,
            render_mode=None,
        )
        self._env_obs, _ = self._env.reset(seed=self.config.seed)
        _CONNECTED[self.id] = self

    def disconnect(self) -> None:
        if not self.is_connected:
            raise RuntimeError(f"{self} is not connected.")
        if self._phase == "live" and self._scene.done:
            self._finish_scene()
        _CONNECTED.pop(self.id, None)
        self._env = None
        report = self.report()
        logger.info("%s: %s", self, report)
        if self.config.report_path is not None:
            self.config.report_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.config.report_path, report)

    def _check_connected(self) -> ObstacleReachEnv:
        if self._env is None:
            raise ConnectionError(f"{self} is not connected: call connect() first.")
        return self._env

    # --- the scene schedule -----------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Move the schedule to `now`, at each observation: a live phase that has run `episode_time_s` ends with a
        new scene, held for `reset_time_s`; the next live phase starts at the first observation after that."""
        if self._phase is None:
            self._start_live(now)
        if self._phase == "live" and now - self._phase_start >= self.config.episode_time_s:
            self._finish_scene()
            self._env_obs, _ = self._check_connected().reset()
            self._scene_index += 1
            self._phase, self._phase_start = "reset", now
        if self._phase == "reset" and now - self._phase_start >= self.config.reset_time_s:
            self._start_live(now)

    def _start_live(self, now: float) -> None:
        self._phase, self._phase_start = "live", now
        self._scene = _Scene(positions=[np.asarray(self._env_obs["agent_pos"], dtype=np.float64)])
        self._target = None
        self._last_action_t = None

    def _finish_scene(self) -> None:
        self._finished.append(self._scene)
        self._scene = _Scene()

    def _step(self, target: np.ndarray) -> None:
        self._env_obs, _, terminated, _, info = self._check_connected().step(target)
        self._scene.positions.append(np.asarray(self._env_obs["agent_pos"], dtype=np.float64))
        if terminated:
            self._scene.done = True
            self._scene.success = bool(info["is_success"])
            self._scene.collision = bool(info["collision"])

    @property
    def scene_index(self) -> int:
        """How many scenes were drawn before the current one (a new scene is drawn as each live phase ends)."""
        return self._scene_index

    def expert_view(self) -> dict[str, np.ndarray]:
        """The scene as the scripted operator sees it (agent position, then goal and obstacles, as the env)."""
        self._check_connected()
        return {"agent_pos": self._env_obs["agent_pos"], "environment_state": self._env_obs["environment_state"]}

    # --- observation and action -------------------------------------------------------------------------------

    def get_observation(self) -> dict[str, Any]:
        self._check_connected()
        self._advance(time.perf_counter())
        self._inject_faults()
        obs = self._env_obs
        values = [*obs["agent_pos"], *obs["environment_state"][:2]]
        observation: dict[str, Any] = {key: float(v) for key, v in zip(self._state_keys, values, strict=False)}
        depth_mm = np.rint(obs[f"depth.{CAMERA_NAME}"][0] * DEPTH_SCALE_MM)
        depth = np.clip(depth_mm, 0, MAX_DEPTH_MM).astype(np.uint16)[..., None]
        for camera in self.camera_names:
            # Copies, as separate cameras' frames are: a consumer that writes into one must not change another.
            observation[camera] = obs["pixels"][CAMERA_NAME].copy()
            observation[f"{camera}_depth"] = depth.copy()
        self._observed_t = time.perf_counter()
        return observation

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        env = self._check_connected()
        self._check_link()
        missing = [key for key in AGENT_KEYS if key not in action]
        # LeRobot's rollout returns a robot to its start by sending every `.pos` of the observation, goal included.
        unknown = [key for key in action if key not in AGENT_KEYS and key not in self._state_keys]
        if missing or unknown:
            raise ValueError(
                f"{self} takes the action keys {list(AGENT_KEYS)}; missing {missing}, unknown {unknown} in "
                f"{sorted(action)}."
            )
        target = np.array([float(action[key]) for key in AGENT_KEYS])
        if not np.all(np.isfinite(target)):
            raise ValueError(f"{self} got a non-finite action {dict(zip(AGENT_KEYS, target, strict=True))}.")
        half = env.layout.workspace_half_extent
        target = np.clip(target, -half, half)
        now = time.perf_counter()
        # The schedule moves at observations only: LeRobot's loops end an episode or a reset by the time a tick
        # starts, so a phase that ended during this tick's inference must not end before the loop sees it.
        if self._phase == "live":
            self._actions += 1
            if self._observed_t is not None:
                self._decision_times.append(now - self._observed_t)
            if self._last_action_t is not None:
                interval = now - self._last_action_t
                self._intervals.append(interval)
                if interval > self.period * (1.0 + self.config.overrun_tolerance):
                    self._overruns += 1
                    # The periods that passed without a new action: the agent kept tracking the previous target.
                    for _ in range(int(interval / self.period) - 1):
                        if self._scene.done:
                            break
                        self._step(self._target)
                        self._late_steps += 1
            if not self._scene.done:
                self._step(target)
            self._target = target
            self._last_action_t = now
        return dict(zip(AGENT_KEYS, target.tolist(), strict=True))

    # --- report -----------------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The run so far: finished scenes (success, collision, mode) and the control loop's timing."""
        scenes = self._finished
        layout = ObstacleLayout.preset(self.config.num_modes)
        modes = [int(classify_trajectory(np.stack(s.positions), layout)) for s in scenes if len(s.positions) > 1]
        intervals = np.asarray(self._intervals)
        timing: dict[str, Any] = {"actions": self._actions, "overruns": self._overruns, "late_steps": self._late_steps}
        if len(intervals):
            timing |= {
                "achieved_hz": float(len(intervals) / intervals.sum()),
                "overrun_share": self._overruns / len(intervals),
                "interval_p50_ms": float(np.percentile(intervals, 50) * 1e3),
                "interval_p99_ms": float(np.percentile(intervals, 99) * 1e3),
                "interval_max_ms": float(intervals.max() * 1e3),
            }
        if self._decision_times:
            # Observation handed out -> its action back: the loop's pre-processing, policy and post-processing.
            decisions = np.asarray(self._decision_times) * 1e3
            timing |= {f"decision_p{q}_ms": float(np.percentile(decisions, q)) for q in (50, 99)}
            timing["decision_max_ms"] = float(decisions.max())
        successes = sum(s.success for s in scenes)
        return {
            "robot": self.name,
            "fps": self.config.fps,
            "scenes": len(scenes),
            "successes": successes,
            "success_rate": successes / len(scenes) if scenes else None,
            "collisions": sum(s.collision for s in scenes),
            "modes": modes,
            "modes_covered": len({m for m in modes if m != OFF_MANIFOLD}),
            **timing,
            **self._fault_report(),
        }

    # --- injected faults (config.faults, a test rig) ----------------------------------------------------------

    def _inject_faults(self) -> None:
        """At each observation, once the schedule has moved: raise the fault set for this step, as a real robot's
        faults surface in LeRobot (a lost link as DeviceNotConnectedError, a camera with no frame as the
        TimeoutError of LeRobot's cameras)."""
        faults = self.config.faults
        if self._link_lost_at is not None:
            raise self._lost_link()
        if self._phase != "live" or self._scene_index != faults.scene:
            return
        self._fault_steps += 1
        if self._fault_steps == faults.disconnect_at_step:
            self._link_lost_at = self._fault_steps
            raise self._lost_link()
        if self._fault_steps == faults.drop_frame_at_step:
            self._frame_dropped_at = self._fault_steps
            raise TimeoutError(
                f"{self.name}: timed out waiting for a frame from camera '{self.config.camera}' at step "
                f"{self._fault_steps} of scene {faults.scene} (injected by faults.drop_frame_at_step)."
            )

    def _check_link(self) -> None:
        """At each action: count those that come after an injected fault; refuse them once the link is lost."""
        if self._link_lost_at is None and self._frame_dropped_at is None:
            return
        self._actions_after_fault += 1
        if self._link_lost_at is not None:
            raise self._lost_link()

    def _lost_link(self) -> DeviceNotConnectedError:
        return DeviceNotConnectedError(
            f"{self.name} lost its connection at step {self._link_lost_at} of scene {self.config.faults.scene} "
            "(injected by faults.disconnect_at_step): it no longer answers."
        )

    def _fault_report(self) -> dict[str, Any]:
        faults = self.config.faults
        if faults.disconnect_at_step is None and faults.drop_frame_at_step is None:
            return {}
        struck = {"link_lost_at_step": self._link_lost_at, "frame_dropped_at_step": self._frame_dropped_at}
        return {"faults": {"scene": faults.scene, **struck, "actions_after_fault": self._actions_after_fault}}
