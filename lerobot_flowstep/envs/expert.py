"""Scripted multi-modal expert for ObstacleReach and the trajectory mode classifier.

Mode convention: obstacle k (bottom to top, as listed in the layout) contributes bit k of the mode index,
set when the trajectory passes it on the right (x > obstacle x). With one obstacle, mode 0 = left and
mode 1 = right; with two, mode = side_bottom + 2 * side_top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from lerobot_flowstep.envs.obstacle import ObstacleLayout

OFF_MANIFOLD = -1


def mode_sides(mode: int, num_obstacles: int) -> np.ndarray:
    """Side (+1 right, -1 left) passed at each obstacle for a mode index."""
    if not 0 <= mode < 2**num_obstacles:
        raise ValueError(f"mode must be in [0, {2**num_obstacles}), got {mode!r}")
    bits = (mode >> np.arange(num_obstacles)) & 1
    return np.where(bits == 1, 1.0, -1.0)


def via_points(layout: ObstacleLayout, mode: int, offsets: np.ndarray | float | None = None) -> np.ndarray:
    """Points (K, 2) beside each obstacle, at the obstacle's y, on the mode's side."""
    centers = layout.centers
    sides = mode_sides(mode, len(centers))
    magnitude = np.broadcast_to(layout.mode_offset if offsets is None else offsets, (len(centers),))
    points = centers.copy()
    points[:, 0] += sides * magnitude
    return points


def _centripetal_catmull_rom(points: np.ndarray, samples_per_segment: int = 64) -> np.ndarray:
    """Dense samples of a centripetal Catmull-Rom spline through `points` (N, 2), endpoints included.

    The centripetal parameterisation never overshoots into loops or cusps, which matters because the
    curve must stay beside the obstacle it bends around.
    """
    # Reflected phantom points make the curve leave the start towards the first via-point and arrive
    # at the goal coming from the last one.
    padded = np.concatenate([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    pieces = []
    for i in range(len(points) - 1):
        p0, p1, p2, p3 = padded[i : i + 4]
        t0 = 0.0
        t1 = t0 + max(np.linalg.norm(p1 - p0), 1e-9) ** 0.5
        t2 = t1 + max(np.linalg.norm(p2 - p1), 1e-9) ** 0.5
        t3 = t2 + max(np.linalg.norm(p3 - p2), 1e-9) ** 0.5
        t = np.linspace(t1, t2, samples_per_segment, endpoint=False)[:, None]
        a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
        a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
        a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
        b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
        b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
        pieces.append((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2)
    pieces.append(points[-1:])
    return np.concatenate(pieces)


def plan_path(start: np.ndarray, goal: np.ndarray, vias: np.ndarray, spacing: float = 0.06) -> np.ndarray:
    """Waypoints (N, 2) from start (row 0) through the via-points to goal (last row), equally spaced.

    The spacing is the arc length L / ceil(L / spacing) <= `spacing`, so consecutive waypoints are at
    most `spacing` apart and the path ends exactly on the goal.
    """
    control = np.concatenate([np.asarray(start, float)[None], np.asarray(vias, float), np.asarray(goal, float)[None]])
    dense = _centripetal_catmull_rom(control)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=-1))])
    count = int(np.ceil(arc[-1] / spacing))
    s = np.linspace(0.0, arc[-1], count + 1)
    return np.stack([np.interp(s, arc, dense[:, 0]), np.interp(s, arc, dense[:, 1])], axis=-1)


def _observation_start_goal(observation: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    start = np.asarray(observation["agent_pos"], dtype=np.float64).reshape(2)
    goal = np.asarray(observation["environment_state"], dtype=np.float64).reshape(-1)[:2]
    return start, goal


class ScriptedExpert:
    """Follows a smooth, collision-free path on a mode drawn uniformly at each reset.

    Only observations are used (agent position, goal in `environment_state`), so the same expert drives
    a raw env, a gym.make-wrapped one or replays. Actions are the next path waypoint after the one
    nearest the agent; waypoints are `spacing` (< the env's max step) apart, so the agent lands on each in
    turn and episodes take ~35-45 steps.
    """

    def __init__(
        self,
        layout: ObstacleLayout,
        seed: int | np.random.Generator | None = None,
        spacing: float = 0.06,
        offset_jitter: float = 0.05,
    ) -> None:
        if spacing >= layout.max_step:
            raise ValueError(f"spacing must be below the env's max step {layout.max_step}, got {spacing!r}")
        self.layout = layout
        self.spacing = spacing
        self.offset_jitter = offset_jitter
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.mode = OFF_MANIFOLD
        self.path = np.zeros((0, 2))
        self._progress = 0

    def reset(self, observation: Mapping[str, Any], mode: int | None = None) -> int:
        """Plan a path for the episode starting at `observation`; returns the mode (random unless given)."""
        self.mode = int(self.rng.integers(self.layout.num_modes)) if mode is None else int(mode)
        # Jittered offsets keep demonstrations of one mode from collapsing onto a single curve.
        offsets = self.layout.mode_offset + self.rng.uniform(
            -self.offset_jitter, self.offset_jitter, size=self.layout.num_obstacles
        )
        start, goal = _observation_start_goal(observation)
        self.path = plan_path(start, goal, via_points(self.layout, self.mode, offsets), self.spacing)
        self._progress = 0
        return self.mode

    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        """Absolute target position (2,) float32 for the current observation."""
        if len(self.path) == 0:
            raise RuntimeError("ScriptedExpert.act called before reset")
        position, _ = _observation_start_goal(observation)
        # Searching only ahead of the last progress keeps a path that passes near itself from jumping back.
        distances = np.linalg.norm(self.path[self._progress :] - position, axis=-1)
        nearest = self._progress + int(np.argmin(distances))
        self._progress = nearest
        return self.path[min(nearest + 1, len(self.path) - 1)].astype(np.float32)


@dataclass
class ExpertEpisode:
    """One expert rollout: observations[t] is what actions[t] was chosen from."""

    mode: int
    observations: list[dict[str, Any]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    success: bool = False
    collision: bool = False

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def positions(self) -> np.ndarray:
        """Agent positions (T + 1, 2) including the final one."""
        return np.stack([np.asarray(o["agent_pos"], dtype=np.float64) for o in self.observations])


def run_expert_episode(
    env: gym.Env, expert: ScriptedExpert, seed: int | None = None, mode: int | None = None
) -> ExpertEpisode:
    """Roll the expert in a single (non-vector) env until the episode ends.

    The returned observations hold T + 1 entries (the last one after the final action), so frames for
    a dataset are `zip(observations[:-1], actions)`.
    """
    observation, _ = env.reset(seed=seed)
    episode = ExpertEpisode(mode=expert.reset(observation, mode=mode), observations=[observation])
    while True:
        action = expert.act(observation)
        observation, _, terminated, truncated, info = env.step(action)
        episode.actions.append(action)
        episode.observations.append(observation)
        if terminated or truncated:
            episode.success = bool(info.get("is_success", False))
            episode.collision = bool(info.get("collision", False))
            return episode


def _first_crossing_x(xy: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x where each trajectory (B, T, 2) first crosses y = level[k]; returns (x (B, K), crossed (B, K))."""
    if xy.shape[1] < 2:
        shape = (xy.shape[0], len(level))
        return np.zeros(shape), np.zeros(shape, dtype=bool)
    s = xy[:, :, 1, None] - level[None, None, :]  # (B, T, K)
    s0, s1 = s[:, :-1], s[:, 1:]
    crossing = ((s0 <= 0.0) & (s1 > 0.0)) | ((s0 >= 0.0) & (s1 < 0.0))  # (B, T-1, K)
    crossed = crossing.any(axis=1)
    first = np.argmax(crossing, axis=1)  # (B, K); 0 where never crossed, masked out below
    s0_at = np.take_along_axis(s0, first[:, None, :], axis=1)[:, 0]
    s1_at = np.take_along_axis(s1, first[:, None, :], axis=1)[:, 0]
    x0 = np.take_along_axis(xy[:, :-1, 0, None], first[:, None, :], axis=1)[:, 0]
    x1 = np.take_along_axis(xy[:, 1:, 0, None], first[:, None, :], axis=1)[:, 0]
    denom = np.where(crossed, s0_at - s1_at, 1.0)
    alpha = np.where(crossed, s0_at / np.where(denom == 0.0, 1.0, denom), 0.0)
    return x0 + alpha * (x1 - x0), crossed


def _min_segment_distance(xy: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Smallest distance (B, K) between each polyline (B, T, 2) and each point centers (K, 2)."""
    if xy.shape[1] == 1:
        return np.linalg.norm(xy[:, 0, None, :] - centers[None], axis=-1)
    p0 = xy[:, :-1, None, :]  # (B, T-1, 1, 2)
    d = xy[:, 1:, None, :] - p0
    w = centers[None, None] - p0  # (B, T-1, K, 2)
    dd = np.sum(d * d, axis=-1)
    t = np.clip(np.sum(w * d, axis=-1) / np.where(dd > 0.0, dd, 1.0), 0.0, 1.0)
    closest = p0 + t[..., None] * d
    return np.linalg.norm(closest - centers[None, None], axis=-1).min(axis=1)


def classify_trajectory(xy: np.ndarray, layout: ObstacleLayout) -> np.ndarray:
    """Mode index in [0, num_modes) of each trajectory xy (..., T, 2), or -1 when off-manifold.

    A trajectory is off-manifold when it
    - penetrates an obstacle: any of its segments (not only its points, so nothing tunnels) comes within
      obstacle radius + agent radius of an obstacle centre;
    - passes an obstacle with a lateral offset |x - obstacle x| below `layout.min_lateral_offset` at the
      obstacle's y (first crossing, linearly interpolated): 0.3 for the 2-mode layout, whose modes sit
      near +-0.5 (there it is inside the collision radius 0.33, so penetration decides); 0.35 for the
      4-mode layout, 0.1 outside its collision radius 0.25 and 0.1 inside the expert's lowest offset
      0.45, flagging partial averaging of modes that squeezes past an obstacle without touching it;
    - never reaches some obstacle's y.
    Otherwise bit k of the mode is set when obstacle k is passed on the right. Used to measure a
    policy's mode coverage and mode collapse.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim < 2 or xy.shape[-1] != 2:
        raise ValueError(f"xy must have shape (..., T, 2), got {xy.shape}")
    leading = xy.shape[:-2]
    flat = xy.reshape(-1, xy.shape[-2], 2)
    centers = layout.centers

    penetrates = (_min_segment_distance(flat, centers) < layout.clearance_radius).any(axis=-1)
    x_cross, crossed = _first_crossing_x(flat, centers[:, 1])
    offset = x_cross - centers[None, :, 0]
    valid = crossed & (np.abs(offset) >= layout.min_lateral_offset)
    bits = (offset > 0.0).astype(np.int64) << np.arange(len(centers), dtype=np.int64)[None]
    mode = bits.sum(axis=-1)
    mode = np.where(penetrates | ~valid.all(axis=-1), OFF_MANIFOLD, mode)
    return mode.reshape(leading)
