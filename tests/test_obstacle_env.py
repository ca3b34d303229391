"""ObstacleReach env, scripted expert, mode classifier, camera rendering and the LeRobot env type."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from lerobot.configs import FeatureType
from lerobot.envs.factory import make_env
from lerobot.envs.utils import env_to_policy_features, preprocess_observation

from lerobot_flowstep.constants import depth_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.core.geometry import depth_to_world_points, project_points
from lerobot_flowstep.envs import OBSTACLE_REACH_ID, ObstacleEnvConfig
from lerobot_flowstep.envs.expert import (
    ScriptedExpert,
    classify_trajectory,
    mode_sides,
    plan_path,
    run_expert_episode,
    via_points,
)
from lerobot_flowstep.envs.obstacle import (
    AGENT_COLOR,
    GOAL_COLOR,
    GROUND_COLOR,
    OBSTACLE_COLOR,
    OUTSIDE_COLOR,
    ObstacleLayout,
    ObstacleReachEnv,
    ObstacleRenderer,
    segment_circle_contact,
)

MODES = [2, 4]


def _expert_rollouts(num_modes: int, episodes: int, seed: int = 0) -> list:
    env = ObstacleReachEnv(num_modes=num_modes)
    expert = ScriptedExpert(env.layout, seed=seed)
    return [run_expert_episode(env, expert, seed=seed * 10_000 + i) for i in range(episodes)]


def _color_mask(rgb: np.ndarray, color: np.ndarray) -> np.ndarray:
    return np.all(rgb.astype(np.int64) == color.astype(np.int64), axis=-1)


# ---------------------------------------------------------------- layout / env


def test_layout_presets() -> None:
    two, four = ObstacleLayout.preset(2), ObstacleLayout.preset(4)
    assert two.centers.tolist() == [[0.0, 0.0]] and two.obstacle_radius == 0.3
    assert four.centers.tolist() == [[0.0, -0.35], [0.0, 0.35]] and four.obstacle_radius == 0.22
    with pytest.raises(ValueError, match="3"):
        ObstacleLayout.preset(3)
    with pytest.raises(ValueError, match="5"):
        ObstacleReachEnv(num_modes=5)


@pytest.mark.parametrize("num_modes", MODES)
def test_observation_matches_space_and_info(num_modes: int) -> None:
    env = ObstacleReachEnv(num_modes=num_modes, camera=True, image_size=32)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert obs["environment_state"].shape == (2 + 2 * env.layout.num_obstacles,)
    np.testing.assert_allclose(obs["environment_state"][2:], env.layout.centers.reshape(-1))
    assert abs(obs["environment_state"][1] - 0.85) < 1e-6 and abs(obs["environment_state"][0]) <= 0.15
    assert info["is_success"] is False
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, -0.8], dtype=np.float32))
    assert env.observation_space.contains(obs)
    assert isinstance(info["is_success"], bool) and not terminated and not truncated and reward == 0.0
    assert env.task and env.task_description
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (128, 128, 3)


def test_step_size_is_limited() -> None:
    env = ObstacleReachEnv()
    obs, _ = env.reset(seed=0)
    start = obs["agent_pos"].copy()
    obs, *_ = env.step(np.array([1.0, -0.85], dtype=np.float32))
    assert np.linalg.norm(obs["agent_pos"] - start) == pytest.approx(0.08, abs=1e-6)


def test_own_truncation() -> None:
    env = ObstacleReachEnv(max_episode_steps=5)
    obs, _ = env.reset(seed=0)
    for step in range(5):
        obs, _, terminated, truncated, info = env.step(obs["agent_pos"])
        assert not terminated and truncated == (step == 4) and info["is_success"] is False


def test_swept_collision_does_not_tunnel() -> None:
    # Both end points lie outside the small circle; only the segment between them crosses it.
    hit, fraction = segment_circle_contact(np.array([-0.1, 0.0]), np.array([0.1, 0.0]), np.zeros((1, 2)), 0.05)
    assert hit and fraction == pytest.approx(0.25)
    assert not segment_circle_contact(np.array([-0.1, 0.1]), np.array([0.1, 0.1]), np.zeros((1, 2)), 0.05)[0]

    # Same in the env: a chord of the clearance circle (radius 0.33) whose end points are outside it.
    env = ObstacleReachEnv(num_modes=2)
    start, end = np.array([0.329, -0.04]), np.array([0.329, 0.04])
    assert np.linalg.norm(start) > env.layout.clearance_radius and np.linalg.norm(end) > env.layout.clearance_radius
    env.reset(seed=0, options={"start": start})
    _, _, terminated, _, info = env.step(end.astype(np.float32))
    assert terminated and info["collision"] and not info["is_success"]


# ---------------------------------------------------------------- expert and classifier


@pytest.mark.parametrize("num_modes", MODES)
def test_expert_succeeds_with_balanced_modes(num_modes: int) -> None:
    episodes = _expert_rollouts(num_modes, 100)
    assert all(ep.success and not ep.collision for ep in episodes)
    lengths = np.array([ep.length for ep in episodes])
    assert 25 <= lengths.min() and lengths.max() <= 55
    histogram = np.bincount([ep.mode for ep in episodes], minlength=num_modes) / len(episodes)
    assert len(histogram) == num_modes
    if num_modes == 2:
        assert np.all((histogram >= 0.35) & (histogram <= 0.65)), histogram
    else:
        assert np.all(histogram >= 0.15), histogram
    # The classifier recovers the expert's mode from the executed trajectory, batched over episodes.
    for ep in episodes:
        assert classify_trajectory(ep.positions, ObstacleLayout.preset(num_modes)) == ep.mode


@pytest.mark.parametrize("num_modes", MODES)
def test_forced_modes_and_path_spacing(num_modes: int) -> None:
    layout = ObstacleLayout.preset(num_modes)
    env = ObstacleReachEnv(num_modes=num_modes)
    expert = ScriptedExpert(layout, seed=1)
    for mode in range(num_modes):
        episode = run_expert_episode(env, expert, seed=mode, mode=mode)
        assert episode.mode == mode and episode.success
        steps = np.linalg.norm(np.diff(expert.path, axis=0), axis=-1)
        assert steps.max() <= 0.06 + 1e-9 and steps.min() > 0.05
        signs = np.sign(via_points(layout, mode)[:, 0] - layout.centers[:, 0])
        np.testing.assert_array_equal(signs, mode_sides(mode, layout.num_obstacles))


@pytest.mark.parametrize("num_modes", MODES)
def test_straight_line_is_off_manifold_and_collides(num_modes: int) -> None:
    layout = ObstacleLayout.preset(num_modes)
    env = ObstacleReachEnv(num_modes=num_modes)
    obs, _ = env.reset(seed=7)
    start, goal = obs["agent_pos"].astype(np.float64), obs["environment_state"][:2].astype(np.float64)
    line = start + np.linspace(0.0, 1.0, 40)[:, None] * (goal - start)
    assert classify_trajectory(line, layout) == -1

    # Aiming straight at the goal walks the same line in the env and hits the obstacle.
    for _ in range(80):
        obs, _, terminated, truncated, info = env.step(goal.astype(np.float32))
        if terminated or truncated:
            break
    assert terminated and info["collision"] and info["is_success"] is False


def test_classifier_is_vectorised_and_flags_bad_trajectories() -> None:
    layout2, layout4 = ObstacleLayout.preset(2), ObstacleLayout.preset(4)
    start, goal = np.array([0.0, -0.85]), np.array([0.0, 0.85])
    left = plan_path(start, goal, via_points(layout2, 0))
    right = plan_path(start, goal, via_points(layout2, 1))
    length = min(len(left), len(right))
    batch = np.stack([left[:length], right[:length], left[:length]]).reshape(3, 1, length, 2)
    modes = classify_trajectory(np.broadcast_to(batch, (3, 2, length, 2)), layout2)
    assert modes.shape == (3, 2) and modes[:, 0].tolist() == [0, 1, 0]

    # Stopping below the obstacle never reaches its y.
    assert classify_trajectory(left[: len(left) // 4], layout2) == -1
    assert classify_trajectory(left[:1], layout2) == -1

    # 4 modes: passing 0.3 beside the obstacles does not collide (clearance 0.25) but is below the
    # 0.35 lateral-offset threshold, so it is flagged as off-manifold.
    squeezed = plan_path(start, goal, via_points(layout4, 3, offsets=0.3))
    assert classify_trajectory(squeezed, layout4) == -1
    for mode in range(4):
        assert classify_trajectory(plan_path(start, goal, via_points(layout4, mode)), layout4) == mode

    # A segment cutting through the obstacle is caught even with no point inside it.
    hop = np.array([[-0.5, -0.85], [-0.5, -0.2], [0.5, 0.2], [0.5, 0.85]])
    assert classify_trajectory(hop, layout2) == -1


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("num_modes", MODES)
def test_depth_back_projects_onto_the_scene(num_modes: int) -> None:
    layout = ObstacleLayout.preset(num_modes)
    renderer = ObstacleRenderer(layout, image_size=64)
    agent, goal = np.array([0.45, -0.6]), np.array([0.1, 0.85])
    rgb, depth = renderer.render(agent, goal)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert depth.shape == (64, 64) and depth.dtype == np.float32 and np.all(depth > 0)

    points, valid = depth_to_world_points(
        torch.from_numpy(depth).double(),
        torch.from_numpy(renderer.intrinsics).double(),
        torch.from_numpy(renderer.extrinsics).double(),
    )
    assert bool(valid.all())
    points = points.numpy().reshape(64, 64, 3)

    ground = _color_mask(rgb, GROUND_COLOR) | _color_mask(rgb, OUTSIDE_COLOR)
    obstacle_top = _color_mask(rgb, OBSTACLE_COLOR)
    agent_top = _color_mask(rgb, AGENT_COLOR)
    goal_disc = _color_mask(rgb, GOAL_COLOR)
    assert ground.sum() > 1000 and obstacle_top.sum() > 20 and agent_top.sum() >= 1 and goal_disc.sum() >= 3
    # The ground also fills the image border.
    border = np.concatenate([ground[0], ground[-1], ground[:, 0], ground[:, -1]])
    assert border.all()

    tol = 1e-3  # float32 depth of ~3 m
    assert np.abs(points[ground][:, 2]).max() < tol
    assert np.abs(points[obstacle_top][:, 2] - layout.obstacle_height).max() < tol
    assert np.abs(points[agent_top][:, 2] - layout.agent_height).max() < tol
    assert np.abs(points[goal_disc][:, 2]).max() < tol
    top_xy = points[obstacle_top][:, :2]
    to_centre = np.linalg.norm(top_xy[:, None] - layout.centers[None], axis=-1).min(axis=1)
    assert to_centre.max() <= layout.obstacle_radius + tol
    assert np.linalg.norm(points[agent_top][:, :2] - agent, axis=-1).max() <= layout.agent_radius + tol
    assert np.linalg.norm(points[goal_disc][:, :2] - goal, axis=-1).max() <= layout.success_radius + tol
    # Everything else is obstacle or agent side wall: its distance to an axis equals that radius.
    walls = ~(ground | obstacle_top | agent_top | goal_disc)
    wall_xy = points[walls][:, :2]
    radial = np.minimum(
        np.abs(np.linalg.norm(wall_xy[:, None] - layout.centers[None], axis=-1) - layout.obstacle_radius).min(1),
        np.abs(np.linalg.norm(wall_xy - agent, axis=-1) - layout.agent_radius),
    )
    assert radial.max() < tol


@pytest.mark.parametrize("image_size", [64, 96])
def test_agent_projects_onto_agent_pixels(image_size: int) -> None:
    layout = ObstacleLayout.preset(2)
    renderer = ObstacleRenderer(layout, image_size=image_size)
    rng = np.random.default_rng(0)
    positions = np.stack([rng.uniform(-0.95, 0.95, 40), rng.uniform(-0.95, -0.4, 40)], axis=-1)
    world = np.concatenate([positions, np.full((40, 1), layout.agent_height)], axis=-1)
    pixels, z = project_points(
        torch.from_numpy(world),
        torch.from_numpy(renderer.intrinsics).double(),
        torch.from_numpy(renderer.extrinsics).double(),
    )
    for position, (u, v), depth_at_centre in zip(positions, pixels.numpy(), z.numpy(), strict=True):
        rgb, depth = renderer.render(position, np.array([0.0, 0.85]))
        col, row = int(round(u)), int(round(v))
        assert _color_mask(rgb, AGENT_COLOR)[row, col], (position, u, v)
        assert abs(depth[row, col] - depth_at_centre) < 0.05


# ---------------------------------------------------------------- gym registration and LeRobot


def test_gym_make_time_limit() -> None:
    env = gym.make(OBSTACLE_REACH_ID)
    assert env.get_wrapper_attr("_max_episode_steps") == 80
    env = gym.make(OBSTACLE_REACH_ID, max_episode_steps=7, num_modes=4)
    assert env.get_wrapper_attr("_max_episode_steps") == 7
    obs, _ = env.reset(seed=0)
    for step in range(7):
        obs, _, terminated, truncated, _ = env.step(obs["agent_pos"])
        assert not terminated and truncated == (step == 6)


def test_env_config_features() -> None:
    cfg = ObstacleEnvConfig(camera=True, num_modes=4, image_size=48)
    assert cfg.type == "flowstep_obstacle" and cfg.gym_id == OBSTACLE_REACH_ID
    assert cfg.package_name == "lerobot_flowstep"
    features = env_to_policy_features(cfg)
    assert features["observation.state"].shape == (2,)
    assert features["observation.environment_state"].type is FeatureType.ENV
    assert features["observation.environment_state"].shape == (6,)
    assert features[rgb_key("top")].type is FeatureType.VISUAL and features[rgb_key("top")].shape == (3, 48, 48)
    assert features[depth_key("top")].shape == (1, 48, 48)
    assert features[intrinsics_key("top")].type is FeatureType.STATE
    assert features[extrinsics_key("top")].shape == (4, 4)
    assert features["action"].type is FeatureType.ACTION
    assert set(env_to_policy_features(ObstacleEnvConfig())) == {
        "action",
        "observation.state",
        "observation.environment_state",
    }
    with pytest.raises(ValueError, match="3"):
        ObstacleEnvConfig(num_modes=3)


def test_make_env_through_lerobot() -> None:
    cfg = ObstacleEnvConfig(camera=True, episode_length=60)
    envs = make_env(cfg, n_envs=2)
    vec = envs["flowstep_obstacle"][0]
    try:
        assert tuple(vec.call("_max_episode_steps")) == (60, 60)
        assert all(isinstance(t, str) and t for t in vec.call("task_description"))
        assert all(isinstance(t, str) and t for t in vec.call("task"))
        obs, _ = vec.reset(seed=[0, 1])
        batch = preprocess_observation(obs)
        expected = {
            "observation.state": ((2, 2), torch.float32),
            "observation.environment_state": ((2, 4), torch.float32),
            rgb_key("top"): ((2, 3, 64, 64), torch.float32),
            depth_key("top"): ((2, 1, 64, 64), torch.float32),
            intrinsics_key("top"): ((2, 3, 3), torch.float32),
            extrinsics_key("top"): ((2, 4, 4), torch.float32),
        }
        assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == expected
        assert 0.0 <= float(batch[rgb_key("top")].min()) and float(batch[rgb_key("top")].max()) <= 1.0

        # Drive both sub-envs with experts the way lerobot-eval's rollout reads success.
        layout = ObstacleLayout.preset(2)
        experts = [ScriptedExpert(layout, seed=i) for i in range(2)]
        for i, expert in enumerate(experts):
            expert.reset({k: v[i] for k, v in obs.items() if k != "pixels"})
        done = np.zeros(2, dtype=bool)
        success = np.zeros(2, dtype=bool)
        for _ in range(60):
            actions = np.stack(
                [expert.act({k: v[i] for k, v in obs.items() if k != "pixels"}) for i, expert in enumerate(experts)]
            )
            obs, _, terminated, truncated, info = vec.step(actions)
            if "final_info" in info:
                success |= np.asarray(info["final_info"]["is_success"], dtype=bool) & (terminated | truncated) & ~done
            done |= terminated | truncated
            if done.all():
                break
        assert done.all() and success.all()
        frames = vec.call("render")
        assert np.stack(frames).shape == (2, 128, 128, 3)
    finally:
        vec.close()
