"""The disturbed PushT env: the block lands exactly at the drawn pose, draws are seeded, initial states and
features are those of LeRobot's `pusht` env."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_pusht", reason="gym-pusht is not installed (pip install 'lerobot_policy_flowstep[pusht]')")

import gymnasium as gym  # noqa: E402
from lerobot.envs.configs import PushtEnv  # noqa: E402
from lerobot.envs.factory import make_env  # noqa: E402

from lerobot_flowstep.datasets.zarr import pusht_environment_state  # noqa: E402
from lerobot_flowstep.envs import PUSHT_DISTURBED_ID, PushtDisturbedEnv  # noqa: E402
from lerobot_flowstep.envs.pusht_disturbance import MIN_AGENT_DISTANCE  # noqa: E402


def make(disturb_step: int) -> gym.Env:
    return gym.make(PUSHT_DISTURBED_ID, disturb_step=disturb_step, obs_type="environment_state_agent_pos")


def hold(env: gym.Env) -> np.ndarray:
    """The action that keeps the agent where it is."""
    return np.asarray(env.unwrapped.agent.position, dtype=np.float64)


def block_pose(env: gym.Env) -> np.ndarray:
    block = env.unwrapped.block
    return np.array([*block.position, block.angle])


def test_block_lands_at_the_drawn_pose_at_the_given_step() -> None:
    env = make(disturb_step=3)
    env.reset(seed=7)
    poses = []
    for _ in range(3):
        _, _, _, _, info = env.step(hold(env))
        assert not info["disturbed"]
        poses.append(block_pose(env))
    _, _, _, _, info = env.step(hold(env))
    assert info["disturbed"]
    drawn = info["disturbed_pose"]
    # Position and angle both as drawn: the angle is set first, so the rotation does not shift the block.
    np.testing.assert_allclose(block_pose(env), drawn, atol=1e-6)
    assert not np.allclose(block_pose(env)[:2], poses[-1][:2], atol=1.0)
    assert np.linalg.norm(drawn[:2] - hold(env)) >= MIN_AGENT_DISTANCE
    # The environment_state observation follows the moved block: its keypoints are those of the drawn pose.
    observation, *_ = env.step(hold(env))
    expected = pusht_environment_state(drawn[None])[0]
    np.testing.assert_allclose(observation["environment_state"], expected, atol=1e-3)


def test_disturbances_are_seeded_and_leave_initial_states_alone() -> None:
    def disturbed_pose(seed: int) -> tuple[np.ndarray, np.ndarray]:
        env = make(disturb_step=0)
        observation, _ = env.reset(seed=seed)
        _, _, _, _, info = env.step(hold(env))
        return observation["environment_state"], info["disturbed_pose"]

    plain = gym.make("gym_pusht/PushT-v0", obs_type="environment_state_agent_pos")
    for seed in (0, 1):
        reference, _ = plain.reset(seed=seed)
        state, pose = disturbed_pose(seed)
        np.testing.assert_array_equal(state, reference["environment_state"])
        np.testing.assert_array_equal(pose, disturbed_pose(seed)[1])
    assert not np.allclose(disturbed_pose(0)[1], disturbed_pose(1)[1])


def test_lerobot_env_type_matches_pusht_features() -> None:
    cfg = PushtDisturbedEnv(obs_type="environment_state_agent_pos", disturb_step=5)
    reference = PushtEnv(obs_type="environment_state_agent_pos")
    assert cfg.features == reference.features and cfg.features_map == reference.features_map
    vec = make_env(cfg, n_envs=2)[cfg.type][0]
    try:
        observation, _ = vec.reset(seed=[0, 1])
        assert observation["environment_state"].shape == (2, 16)
    finally:
        vec.close()


def test_disturb_step_outside_the_episode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"disturb_step \(300\) must lie inside the episode \[0, 300\)"):
        PushtDisturbedEnv(disturb_step=300)


def place_block_on_goal(env: gym.Env) -> None:
    sim = env.unwrapped
    sim.block.angle = float(sim.goal_pose[2])
    sim.block.position = (float(sim.goal_pose[0]), float(sim.goal_pose[1]))


@pytest.mark.parametrize("score_after_disturbance", [True, False])
def test_only_steps_after_the_push_are_scored(score_after_disturbance: bool) -> None:
    env = gym.make(
        PUSHT_DISTURBED_ID,
        disturb_step=3,
        obs_type="environment_state_agent_pos",
        score_after_disturbance=score_after_disturbance,
    )
    env.reset(seed=3)
    place_block_on_goal(env)  # solved before the push
    _, reward, terminated, _, info = env.step(hold(env))
    if not score_after_disturbance:
        assert terminated and info["is_success"] and reward == pytest.approx(1.0)
        return
    assert (reward, terminated, info["is_success"]) == (0.0, False, False)
    for _ in range(2):
        _, reward, terminated, _, info = env.step(hold(env))
        assert (reward, terminated, info["is_success"]) == (0.0, False, False)
    # The push moves the block off the goal; from then on the env's own reward counts again.
    _, reward, terminated, _, info = env.step(hold(env))
    assert info["disturbed"] and not terminated
    assert reward == pytest.approx(min(1.0, info["coverage"] / env.unwrapped.success_threshold))
    place_block_on_goal(env)
    _, reward, terminated, _, info = env.step(hold(env))
    assert terminated and info["is_success"] and reward == pytest.approx(1.0)
