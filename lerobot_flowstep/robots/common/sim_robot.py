"""What the plugin's simulated robots share: a LeRobot `Robot` with an RGB-D camera given as a RealSense gives it,
on a real-time scene schedule, with its timing report, calibration files and injected faults. Each task's robot
(`obstacle_sim/`, `metaworld_sim/`) subclasses `SimRobot` and gives only its scene: the env, the state, what an
action means and when a scene has succeeded.

Camera: `<camera>` (H, W, 3) uint8 RGB and `<camera>_depth` (H, W, 1) uint16 millimetres along the optical axis,
which `lerobot-record` stores as a depth map (`info.is_depth_map`, `depth_unit: mm`). LeRobot records no camera
parameters: `connect()` (or `lerobot-calibrate`) writes the camera's intrinsics and camera-to-world extrinsics as
JSON to `calibration_dir/<id>_<camera>_camera.json`, a file that `lerobot-flowstep calibrate --calibration-file`
reads into a recorded dataset.

Schedule (see `SimRobotConfig`): live for `episode_time_s`, then a new scene held still for `reset_time_s`. The
schedule moves at observations only, as LeRobot's loops end an episode or a reset by the time a tick starts.

Real time: `send_action` measures the wall time since the previous action. One later than the period (plus
`overrun_tolerance`) is an overrun; the robot has meanwhile done, in each period that passed, what the task's
robot does without a new command (`_held`). It also measures the time since the observation was handed out:
what the control loop spent between them (pre-processing, the policy, post-processing), which is the inference
time as the robot sees it. `report()` (written to `report_path` on disconnect) gives the scenes and their success,
the control rate achieved, the share of overruns and those times.

A scripted operator (`lerobot_flowstep.teleoperators`) watches a robot of the same process through
`connected_robot`, as a person watches the real scene.

Faults (`config.faults`, a test rig): a lost link or a camera with no frame at a given step of a scene, raised
from `get_observation` / `send_action` as a real robot's are; `report()` then says where each struck and how many
actions were sent after it.

The clock is this module's `time.perf_counter` (a test replaces `time` here to drive the schedule).
"""

from __future__ import annotations

import abc
import json
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from lerobot.robots import Robot
from lerobot.utils.errors import DeviceNotConnectedError

from lerobot_flowstep.datasets.calibration import write_json_atomic
from lerobot_flowstep.robots.common.config_sim_robot import SimRobotConfig

logger = logging.getLogger(__name__)

# uint16 millimetres, the format of a RealSense depth stream (0 = no return).
DEPTH_SCALE_MM = 1000.0
MAX_DEPTH_MM = int(np.iinfo(np.uint16).max)

# The simulated robots of this process, by (robot type, id), so that a scripted operator can watch one.
_CONNECTED: dict[tuple[str, str | None], SimRobot] = {}


def connected_robot[R: SimRobot](robot_class: type[R], robot_id: str | None = None) -> R:
    """The connected robot of `robot_class` in this process with this id (None: the only one)."""
    robots = {robot_id_: robot for (name, robot_id_), robot in _CONNECTED.items() if name == robot_class.name}
    if robot_id in robots:
        return robots[robot_id]
    if robot_id is None and len(robots) == 1:
        return next(iter(robots.values()))
    raise ConnectionError(
        f"No connected {robot_class.name} robot with id {robot_id!r} in this process (connected: "
        f"{sorted(map(str, robots)) or 'none'}). The scripted operator drives a simulated robot of the same "
        f"command: give it --robot.type={robot_class.name}, and --teleop.robot_id=<the robot's --robot.id> "
        "when there are several."
    )


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metric depth (H, W) -> (H, W, 1) uint16 millimetres, clipped to the format's range (0 = no return)."""
    depth_mm = np.rint(np.asarray(depth_m, dtype=np.float64) * DEPTH_SCALE_MM)
    return np.clip(depth_mm, 0, MAX_DEPTH_MM).astype(np.uint16)[..., None]


@dataclass
class SceneRecord:
    """One scene's live phase: how it ended. A task's robot subclasses it to keep what its report needs."""

    success: bool = False
    # The scene has ended (success, failure or its env's own time limit): the robot holds still until the live
    # phase ends, as the env must not be stepped past its end.
    done: bool = False


class SimRobot[Command](Robot):
    """See the module docstring. `Command` is what a task's env steps with (parsed from LeRobot's action dict)."""

    config: SimRobotConfig

    def __init__(self, config: SimRobotConfig) -> None:
        super().__init__(config)
        self.config = config
        self.period = 1.0 / config.fps
        self.cameras = dict.fromkeys(self.camera_names, "simulated RGB-D")
        self._phase: str | None = None  # None before the first tick, then "live" or "reset"
        self._phase_start = 0.0
        self._scene: SceneRecord = SceneRecord()
        self._scene_index = 0
        self._command: Command | None = None  # the last command of this live phase
        self._last_action_t: float | None = None
        self._finished: list[SceneRecord] = []
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

    # --- the task: what each robot gives -----------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def state_features(self) -> tuple[str, ...]:
        """The float state keys of the observation (`.pos` / `.vel`: LeRobot's rollout keeps only those)."""

    @property
    @abc.abstractmethod
    def action_features(self) -> dict[str, type]: ...

    @property
    @abc.abstractmethod
    def _env_open(self) -> bool:
        """Whether the task's env exists (the robot is connected)."""

    @abc.abstractmethod
    def _open_env(self) -> None:
        """Build the task's env with its first scene (`config.seed`)."""

    @abc.abstractmethod
    def _close_env(self) -> None: ...

    @abc.abstractmethod
    def _next_scene(self, scene_index: int) -> None:
        """Draw scene `scene_index` (the env's reset), at the end of a live phase."""

    @abc.abstractmethod
    def _new_record(self) -> SceneRecord:
        """The record of the scene whose live phase starts now."""

    @abc.abstractmethod
    def _state(self) -> dict[str, float]:
        """The current state, by `state_features`."""

    @abc.abstractmethod
    def _camera_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """The camera's current (H, W, 3) uint8 RGB and (H, W) metric depth."""

    @abc.abstractmethod
    def _camera_parameters(self) -> dict[str, list[list[float]]]:
        """{"intrinsics": 3x3 OpenCV pinhole, "camera_to_world": 4x4 in OpenCV axes} of the camera."""

    @abc.abstractmethod
    def _parse_action(self, action: dict[str, Any]) -> tuple[Command, bool]:
        """LeRobot's action -> (the env's command, whether it is the control loop's: timed and counted), with
        a ValueError naming what is wrong in a bad one."""

    @abc.abstractmethod
    def _held(self, command: Command) -> Command:
        """What the robot does in a period that passed without a new action, after `command`."""

    @abc.abstractmethod
    def _step(self, command: Command) -> None:
        """Step the env with `command`, updating `self._scene` (its `done` and `success`)."""

    @abc.abstractmethod
    def _sent(self, command: Command) -> dict[str, Any]:
        """The action as executed (what `send_action` returns, as LeRobot's robots do)."""

    def _task_report(self, scenes: list[SceneRecord]) -> dict[str, Any]:
        """The task's own fields of the report."""
        return {}

    # --- features ----------------------------------------------------------------------------------------------

    @property
    def camera_names(self) -> tuple[str, ...]:
        """The camera, then the load-test views (`extra_cameras`)."""
        camera = self.config.camera
        return (camera, *(f"{camera}_{i}" for i in range(2, self.config.extra_cameras + 2)))

    @property
    def observation_features(self) -> dict[str, type | tuple[int, int, int]]:
        size = self.config.image_size
        features: dict[str, type | tuple[int, int, int]] = dict.fromkeys(self.state_features, float)
        for camera in self.camera_names:
            features |= {camera: (size, size, 3), f"{camera}_depth": (size, size, 1)}
        return features

    # --- calibration -------------------------------------------------------------------------------------------

    @cached_property
    def camera_calibration(self) -> dict[str, dict[str, list[list[float]]]]:
        """{camera: {"intrinsics": 3x3 OpenCV pinhole, "camera_to_world": 4x4 in OpenCV axes}}."""
        return dict.fromkeys(self.camera_names, self._camera_parameters())

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

    # --- connection --------------------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._env_open

    def connect(self, calibrate: bool = True) -> None:
        if self.is_connected:
            raise RuntimeError(f"{self} is already connected.")
        if (self.name, self.id) in _CONNECTED:
            raise RuntimeError(f"A {self.name} robot with id {self.id!r} is already connected in this process.")
        # The env first: a task's camera parameters may come from its env (MetaWorld's are read from MuJoCo).
        self._open_env()
        try:
            if calibrate and not self.is_calibrated:
                self.calibrate()
        except BaseException:
            self._close_env()
            raise
        _CONNECTED[(self.name, self.id)] = self

    def disconnect(self) -> None:
        if not self.is_connected:
            raise RuntimeError(f"{self} is not connected.")
        if self._phase == "live" and self._scene.done:
            self._finish_scene()
        _CONNECTED.pop((self.name, self.id), None)
        self._close_env()
        report = self.report()
        logger.info("%s: %s", self, report)
        if self.config.report_path is not None:
            self.config.report_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.config.report_path, report)

    def _check_connected(self) -> None:
        if not self.is_connected:
            raise ConnectionError(f"{self} is not connected: call connect() first.")

    # --- the scene schedule ------------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Move the schedule to `now`, at each observation: a live phase that has run `episode_time_s` ends with a
        new scene, held for `reset_time_s`; the next live phase starts at the first observation after that."""
        if self._phase is None:
            self._start_live(now)
        if self._phase == "live" and now - self._phase_start >= self.config.episode_time_s:
            self._finish_scene()
            self._scene_index += 1
            self._next_scene(self._scene_index)
            self._phase, self._phase_start = "reset", now
        if self._phase == "reset" and now - self._phase_start >= self.config.reset_time_s:
            self._start_live(now)

    def _start_live(self, now: float) -> None:
        self._phase, self._phase_start = "live", now
        self._scene = self._new_record()
        self._command = None
        self._last_action_t = None

    def _finish_scene(self) -> None:
        self._finished.append(self._scene)
        self._scene = SceneRecord()

    @property
    def scene_index(self) -> int:
        """How many scenes were drawn before the current one (a new scene is drawn as each live phase ends)."""
        return self._scene_index

    # --- observation and action --------------------------------------------------------------------------------

    def get_observation(self) -> dict[str, Any]:
        self._check_connected()
        self._advance(time.perf_counter())
        self._inject_faults()
        observation: dict[str, Any] = dict(self._state())
        rgb, depth_m = self._camera_frame()
        depth = depth_to_mm(depth_m)
        for camera in self.camera_names:
            # Copies, as separate cameras' frames are: a consumer that writes into one must not change another.
            observation[camera] = rgb.copy()
            observation[f"{camera}_depth"] = depth.copy()
        self._observed_t = time.perf_counter()
        return observation

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        self._check_connected()
        self._check_link()
        command, timed = self._parse_action(action)
        now = time.perf_counter()
        # The schedule moves at observations only: LeRobot's loops end an episode or a reset by the time a tick
        # starts, so a phase that ended during this tick's inference must not end before the loop sees it.
        if self._phase == "live":
            if timed:
                self._account(now)
            if not self._scene.done:
                self._step(command)
            self._command = command
            # An untimed command (not the control loop's) restarts the interval: the loop's next action is timed
            # from it, not from the loop's last one.
            self._last_action_t = now if timed else None
        return self._sent(command)

    def _account(self, now: float) -> None:
        """Count an action of the control loop: its decision time, its interval and, when late, the periods that
        passed without one (the robot did what it does without a new command in each)."""
        self._actions += 1
        if self._observed_t is not None:
            self._decision_times.append(now - self._observed_t)
        if self._last_action_t is None:
            return
        interval = now - self._last_action_t
        self._intervals.append(interval)
        if interval > self.period * (1.0 + self.config.overrun_tolerance):
            self._overruns += 1
            for _ in range(int(interval / self.period) - 1):
                if self._scene.done or self._command is None:
                    break
                self._command = self._held(self._command)
                self._step(self._command)
                self._late_steps += 1

    # --- report ------------------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The run so far: finished scenes (success, and the task's fields) and the control loop's timing."""
        scenes = self._finished
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
            **self._task_report(scenes),
            **timing,
            **self._fault_report(),
        }

    # --- injected faults (config.faults, a test rig) -----------------------------------------------------------

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
