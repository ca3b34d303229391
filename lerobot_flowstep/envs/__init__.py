"""Embedded default task: ObstacleReach, a multi-modal 2-D reaching env, its expert and LeRobot env type.

Importing this package registers the gym ids `flowstep/ObstacleReach-v0` and `flowstep/PushTDisturbed-v0`
and the LeRobot env types `flowstep_obstacle` (`ObstacleEnvConfig`), `flowstep_pusht_disturbed`
(`PushtDisturbedEnv`); the `rlbench` env type lives in `lerobot_flowstep.rlbench`.
"""

from gymnasium.envs.registration import register, registry

from lerobot_flowstep.envs.configs import ObstacleEnvConfig
from lerobot_flowstep.envs.expert import ScriptedExpert, classify_trajectory, plan_path
from lerobot_flowstep.envs.obstacle import ObstacleLayout, ObstacleReachEnv, ObstacleRenderer
from lerobot_flowstep.envs.pusht_disturbance import BlockDisturbance, PushtDisturbedEnv

OBSTACLE_REACH_ID = "flowstep/ObstacleReach-v0"
PUSHT_DISTURBED_ID = "flowstep/PushTDisturbed-v0"

# Module reloads (tests, notebooks) re-run this file; gymnasium warns and overrides on re-registration.
if OBSTACLE_REACH_ID not in registry:
    register(
        id=OBSTACLE_REACH_ID,
        entry_point="lerobot_flowstep.envs.obstacle:ObstacleReachEnv",
        max_episode_steps=80,
        # The TimeLimit wrapper added by gym.make owns truncation (and `_max_episode_steps`), so that
        # gym.make(..., max_episode_steps=N) is the single source of the episode length.
        kwargs={"max_episode_steps": None},
    )

if PUSHT_DISTURBED_ID not in registry:
    # gym-pusht is imported by the entry point only, so that this package imports without it.
    register(
        id=PUSHT_DISTURBED_ID,
        entry_point="lerobot_flowstep.envs.pusht_disturbance:make_disturbed_pusht",
        max_episode_steps=300,
        kwargs={"obs_type": "state", "disturb_step": 100},
    )

__all__ = [
    "BlockDisturbance",
    "OBSTACLE_REACH_ID",
    "PUSHT_DISTURBED_ID",
    "PushtDisturbedEnv",
    "ObstacleEnvConfig",
    "ObstacleLayout",
    "ObstacleReachEnv",
    "ObstacleRenderer",
    "ScriptedExpert",
    "classify_trajectory",
    "plan_path",
]
