"""What every simulated robot of the plugin is configured with: its real-time schedule, its RGB-D camera, its
report and the faults a test injects. Each task's config (`obstacle_sim/`, `metaworld_sim/`) adds its scene."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lerobot.robots import RobotConfig


@dataclass
class SimFaultsConfig:
    """Faults to inject: a test rig for how LeRobot's commands and a policy meet a robot that misbehaves, as a
    real one's faults surface (exceptions from `get_observation` / `send_action`). None injects nothing.

    Steps count the observations of one scene's live phase (1 = its first), so a fault lands in the same
    episode however fast the machine runs the loop.
    """

    # The scene the faults hit: 0 is the first (under lerobot-record, scene k is episode k).
    scene: int = 0
    # From this step on the robot is unreachable: get_observation and send_action raise DeviceNotConnectedError.
    disconnect_at_step: int | None = None
    # At this step the camera gives no frame: get_observation raises TimeoutError, as LeRobot's cameras do when
    # no frame arrives in time; the next step has a frame again.
    drop_frame_at_step: int | None = None

    def __post_init__(self) -> None:
        for name in ("disconnect_at_step", "drop_frame_at_step"):
            step = getattr(self, name)
            if step is not None and step < 1:
                raise ValueError(f"faults.{name} counts from 1 (the live phase's first observation), got {step}.")
        if self.scene < 0:
            raise ValueError(f"faults.scene must be at least 0, got {self.scene}.")


@dataclass(kw_only=True)
class SimRobotConfig(RobotConfig):
    """A simulated robot that keeps real time.

    The scene runs on a schedule that mirrors `lerobot-record`'s: each scene is live for `episode_time_s` (the
    actions move the robot), then a new scene is drawn and held still for `reset_time_s` (the actions are ignored,
    as while a person resets a real scene). A live phase starts at the first observation after the reset, so
    with `--dataset.episode_time_s` / `--dataset.reset_time_s` equal to these, every recorded episode is one scene
    from its start. Under `lerobot-rollout`, each scene is one trial; the reset lets a policy drop what it had
    queued for the previous scene (make it at least (n_action_steps + n_obs_steps) / fps).
    """

    # Control rate the robot is driven at: the period against which a late action counts as an overrun.
    fps: int = 30
    episode_time_s: float = 4.0
    reset_time_s: float = 0.5
    # The camera's name and square image size; it gives `<camera>` RGB and `<camera>_depth` uint16 millimetres.
    # Each task's config sets the default name (its scene's camera).
    camera: str = ""
    image_size: int = 64
    # Load-test views: this many more RGB-D cameras, `<camera>_2`, `<camera>_3`, ..., each a copy of the camera's
    # view with its calibration. They measure a policy's cost at a multi-camera size (RLBench's is 4 cameras at
    # 128 px: `extra_cameras=3`, `image_size=128`); they add no information.
    extra_cameras: int = 0
    # Seed of the scenes; None draws them afresh.
    seed: int | None = 0
    # An action arriving later than (1 + overrun_tolerance) periods after the previous one is an overrun; what the
    # robot did in the periods that passed without a new action is the task's (see each robot's docstring).
    overrun_tolerance: float = 0.1
    # Where to write the run's report (scenes, successes, control rate, overruns, ...) as JSON on disconnect.
    report_path: Path | None = None
    # Injected faults, for tests only (see SimFaultsConfig).
    faults: SimFaultsConfig = field(default_factory=SimFaultsConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}.")
        if self.episode_time_s <= 0 or self.reset_time_s < 0:
            raise ValueError(
                f"episode_time_s must be positive and reset_time_s at least 0, got {self.episode_time_s} and "
                f"{self.reset_time_s}."
            )
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {self.image_size}.")
        if self.extra_cameras < 0:
            raise ValueError(f"extra_cameras must be at least 0, got {self.extra_cameras}.")
        if self.overrun_tolerance < 0:
            raise ValueError(f"overrun_tolerance must be at least 0, got {self.overrun_tolerance}.")
        if not self.camera or "/" in self.camera or self.camera.endswith("_depth"):
            raise ValueError(f"camera must be a plain name without '/' or a '_depth' suffix, got '{self.camera}'.")
