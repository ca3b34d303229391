"""PushT with the block pushed to a random pose mid-episode: the disturbance test of the PushT benchmark.

`lerobot-eval --env.type=flowstep_pusht_disturbed --env.disturb_step=100 ...` evaluates any policy trained
for LeRobot's `pusht` env on it: observations, features and episode length are those of `pusht`; only the
block moves once, at `disturb_step`, to a pose drawn like gym-pusht's own reset draws it, away from the
agent so that the two never overlap. The draw is seeded by the episode seed, so every policy evaluated on
the same seeds meets the same disturbances.

By default only what happens after the push is scored (`score_after_disturbance`): before it, reward is 0 and
success does not end the episode, so that a policy which solves the task early is pushed too and success
means recovering from the push, in the `episode_length - disturb_step` steps that remain.

Needs `gym-pusht` (`pip install 'lerobot_policy_flowstep[pusht]'`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from lerobot.envs.configs import EnvConfig, PushtEnv

from lerobot_flowstep.envs.configs import FlowstepGymIds

# gym-pusht's reset draws the block centre from [100, 400)^2 and its angle from U(-pi, pi).
BLOCK_POSITION_RANGE = (100, 400)
# The T's farthest point is ~75 px from its centre of mass and the agent disc has radius 15: beyond this
# distance a new block pose cannot overlap the agent, which pymunk would resolve with a violent push.
MIN_AGENT_DISTANCE = 100.0


class BlockDisturbance(gym.Wrapper):
    """Moves the block of a gym-pusht `PushTEnv` to a random pose before the `disturb_step`-th action.

    `info["disturbed"]` is True from that step on; `info["disturbed_pose"]` holds the new (x, y, angle).
    With `score_after_disturbance`, steps before the push give reward 0, never succeed and never terminate.
    """

    def __init__(
        self,
        env: gym.Env,
        disturb_step: int,
        min_agent_distance: float = MIN_AGENT_DISTANCE,
        score_after_disturbance: bool = True,
    ):
        super().__init__(env)
        if disturb_step < 0:
            raise ValueError(f"disturb_step must be >= 0, got {disturb_step}.")
        self.disturb_step = disturb_step
        self.min_agent_distance = min_agent_distance
        self.score_after_disturbance = score_after_disturbance
        self._steps = 0
        self._rng = np.random.default_rng()
        self._pose: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            # A stream of its own, so the env's reset draws (and hence the initial states) are untouched.
            self._rng = np.random.default_rng([seed, 0x5EED])
        self._steps = 0
        self._pose = None
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        if self._steps == self.disturb_step:
            self._pose = self._disturb()
        self._steps += 1
        observation, reward, terminated, truncated, info = self.env.step(action)
        info["disturbed"] = self._pose is not None
        if self._pose is not None:
            info["disturbed_pose"] = self._pose
        elif self.score_after_disturbance:
            reward, terminated = 0.0, False
            info["is_success"] = False
        return observation, reward, terminated, truncated, info

    def sample_pose(self, agent_position: np.ndarray) -> np.ndarray:
        low, high = BLOCK_POSITION_RANGE
        while True:
            pose = np.array(
                [*self._rng.integers(low, high, size=2), self._rng.uniform(-math.pi, math.pi)], dtype=np.float64
            )
            if np.linalg.norm(pose[:2] - agent_position) >= self.min_agent_distance:
                return pose

    def _disturb(self) -> np.ndarray:
        sim = self.env.unwrapped
        if not hasattr(sim, "block") or not hasattr(sim, "agent"):
            raise TypeError(f"BlockDisturbance needs gym-pusht's PushTEnv, got {type(sim).__name__}.")
        pose = self.sample_pose(np.asarray(sim.agent.position, dtype=np.float64))
        # The angle first: pymunk rotates about the centre of mass, so setting it after the position would
        # shift the block (gym-pusht's own `_set_state` does it the other way round for legacy data).
        sim.block.angle = float(pose[2])
        sim.block.position = (float(pose[0]), float(pose[1]))
        sim.block.velocity = (0.0, 0.0)
        sim.block.angular_velocity = 0.0
        return pose


def make_disturbed_pusht(
    disturb_step: int,
    min_agent_distance: float = MIN_AGENT_DISTANCE,
    score_after_disturbance: bool = True,
    **kwargs,
) -> gym.Env:
    """Gym entry point of `flowstep/PushTDisturbed-v0`: gym-pusht's PushT-v0 wrapped in `BlockDisturbance`."""
    try:
        from gym_pusht.envs import PushTEnv
    except ImportError as err:
        raise ModuleNotFoundError(
            "The disturbed PushT env needs gym-pusht: pip install 'lerobot_policy_flowstep[pusht]'."
        ) from err
    return BlockDisturbance(PushTEnv(**kwargs), disturb_step, min_agent_distance, score_after_disturbance)


@EnvConfig.register_subclass("flowstep_pusht_disturbed")
@dataclass
class PushtDisturbedEnv(FlowstepGymIds, PushtEnv):
    """LeRobot's `pusht` env with the block pushed to a random pose before action `disturb_step`; with
    `score_after_disturbance` (default), only the steps from the push on are scored."""

    task: str | None = "PushTDisturbed-v0"
    disturb_step: int = 100
    min_agent_distance: float = MIN_AGENT_DISTANCE
    score_after_disturbance: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.disturb_step < self.episode_length:
            raise ValueError(
                f"disturb_step ({self.disturb_step}) must lie inside the episode [0, {self.episode_length})."
            )

    @property
    def gym_kwargs(self) -> dict:
        return super().gym_kwargs | {
            "disturb_step": self.disturb_step,
            "min_agent_distance": self.min_agent_distance,
            "score_after_disturbance": self.score_after_disturbance,
        }
