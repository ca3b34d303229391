"""ObstacleReach: a 2-D reaching task whose demonstrations are genuinely multi-modal.

The agent starts near the bottom of the workspace and must reach a goal near the top; one or two
cylindrical obstacles sit on the straight line between them. Passing left or right of each obstacle is
equally good, so a demonstrator that picks a side at random produces a multi-modal action distribution
whose mean (the straight line) collides. A policy that averages modes therefore fails visibly.

Observations (gymnasium Dict space):
- `agent_pos` (2,) float32: agent centre (x, y).
- `environment_state` (2 + 2K,) float32: goal (x, y) followed by the K obstacle centres.
- with `camera=True`, a tilted pinhole camera `top` (OpenCV convention, see `lerobot_flowstep.core.geometry`):
  `pixels` = {"top": (H, W, 3) uint8}, `depth.top` (1, H, W) float32 metres (camera-frame z),
  `camera.top.intrinsics` (3, 3) float32, `camera.top.extrinsics` (4, 4) float32 camera-to-world.
  LeRobot's `preprocess_observation` turns these into `observation.images.top`, `observation.depth.top`,
  `observation.camera.top.intrinsics` and `observation.camera.top.extrinsics`.

Action: absolute target position (2,) in [-1, 1]^2; the agent moves toward it by at most `max_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from lerobot_flowstep.core.geometry import camera_rays, look_at_extrinsics

CAMERA_NAME = "top"
TASK_NAME = "obstacle_reach"
TASK_DESCRIPTION = "Move the blue agent to the green goal without touching the red obstacles."

# Top caps are drawn in these exact colours (side walls are shaded darker), so tests and debugging
# tools can segment the image by colour.
GROUND_COLOR = np.array([228, 226, 215], dtype=np.float64)
OUTSIDE_COLOR = np.array([200, 198, 188], dtype=np.float64)
GOAL_COLOR = np.array([60, 190, 80], dtype=np.float64)
OBSTACLE_COLOR = np.array([205, 65, 55], dtype=np.float64)
AGENT_COLOR = np.array([40, 90, 235], dtype=np.float64)

# Steep enough that the goal disc stays visible over the top of the far obstacle in the 4-mode scene,
# with a field of view (~41 degrees) that just contains the whole [-1, 1]^2 workspace.
CAMERA_EYE = (0.0, -1.5, 3.0)
CAMERA_TAN_HALF_FOV = 0.37


@dataclass(frozen=True)
class ObstacleLayout:
    """Scene geometry and episode distribution. Use `ObstacleLayout.preset(num_modes)`.

    Obstacles are listed bottom to top (increasing y); mode indices are built from the side passed at
    each obstacle in that order (see `lerobot_flowstep.envs.expert.mode_sides`).
    """

    num_modes: int
    obstacle_centers: tuple[tuple[float, float], ...]
    obstacle_radius: float
    obstacle_height: float = 0.25
    agent_radius: float = 0.03
    agent_height: float = 0.08
    workspace_half_extent: float = 1.0
    goal_y: float = 0.85
    goal_x_half_range: float = 0.15
    start_y: float = -0.85
    start_x_std: float = 0.04
    start_y_std: float = 0.03
    success_radius: float = 0.08
    max_step: float = 0.08
    # Lateral offset (|x - obstacle x| at the obstacle's y) of the expert's via-points.
    mode_offset: float = 0.5
    # Below this offset a trajectory counts as off-manifold in `classify_trajectory` (see there).
    min_lateral_offset: float = 0.3

    @classmethod
    def preset(cls, num_modes: int) -> ObstacleLayout:
        """The two supported scenes: one obstacle (2 modes) or two stacked obstacles (4 modes)."""
        if num_modes == 2:
            return cls(num_modes=2, obstacle_centers=((0.0, 0.0),), obstacle_radius=0.3)
        if num_modes == 4:
            # Modes sit at |offset| ~ 0.5 and the collision boundary at 0.22 + 0.03 = 0.25; 0.35 flags
            # trajectories that squeeze past an obstacle far closer than any demonstration (partial mode
            # averaging) even though they do not collide.
            return cls(
                num_modes=4,
                obstacle_centers=((0.0, -0.35), (0.0, 0.35)),
                obstacle_radius=0.22,
                min_lateral_offset=0.35,
            )
        raise ValueError(f"num_modes must be 2 or 4, got {num_modes!r}")

    @property
    def centers(self) -> np.ndarray:
        """Obstacle centres (K, 2) float64."""
        return np.asarray(self.obstacle_centers, dtype=np.float64).reshape(-1, 2)

    @property
    def num_obstacles(self) -> int:
        return len(self.obstacle_centers)

    @property
    def clearance_radius(self) -> float:
        """Distance between agent and obstacle centres below which they touch."""
        return self.obstacle_radius + self.agent_radius

    def sample_start_goal(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One episode's agent start and goal, both (2,) float64."""
        start = np.array([rng.normal(0.0, self.start_x_std), self.start_y + rng.normal(0.0, self.start_y_std)])
        goal = np.array([rng.uniform(-self.goal_x_half_range, self.goal_x_half_range), self.goal_y])
        return start, goal


def segment_circle_contact(p0: np.ndarray, p1: np.ndarray, centers: np.ndarray, radius: float) -> tuple[bool, float]:
    """Whether the segment p0 -> p1 enters any circle, and the fraction of it travelled before contact.

    Checking the swept segment rather than only p1 keeps a fast agent from tunnelling through an
    obstacle between two steps.
    """
    d = p1 - p0
    f = p0[None, :] - centers
    a = float(d @ d)
    c = np.einsum("kd,kd->k", f, f) - radius**2
    if np.any(c <= 0.0):
        return True, 0.0
    if a == 0.0:
        return False, 1.0
    b = 2.0 * (f @ d)
    disc = b * b - 4.0 * a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2.0 * a)
    hit = (disc >= 0.0) & (t >= 0.0) & (t <= 1.0)
    if not np.any(hit):
        return False, 1.0
    return True, float(np.min(t[hit]))


def pinhole_intrinsics(image_size: int, tan_half_fov: float) -> np.ndarray:
    """Square pinhole matrix whose image spans [-0.5, size - 0.5] in pixel coordinates."""
    focal = (image_size / 2.0) / tan_half_fov
    centre = (image_size - 1) / 2.0
    return np.array([[focal, 0.0, centre], [0.0, focal, centre], [0.0, 0.0, 1.0]])


def _cylinder_hit(
    origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, radius: float, height: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameter of the first hit with a vertical cylinder standing on z=0 (inf on a miss).

    Returns (t (N,), shade (N,)): the shade darkens side walls by their orientation to a fixed light so
    the cylinders read as solid; top caps keep their flat colour (shade 1).
    """
    ox, oy, oz = origin[0] - center[0], origin[1] - center[1], origin[2]
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    a = np.maximum(dx * dx + dy * dy, 1e-12)
    b = 2.0 * (ox * dx + oy * dy)
    c = ox * ox + oy * oy - radius * radius
    disc = b * b - 4.0 * a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    z_side = oz + t_side * dz
    side_ok = (disc >= 0.0) & (t_side > 0.0) & (z_side >= 0.0) & (z_side <= height)

    t_top = (height - oz) / dz
    top_x, top_y = ox + t_top * dx, oy + t_top * dy
    top_ok = (t_top > 0.0) & (top_x * top_x + top_y * top_y <= radius * radius)

    t = np.where(side_ok, t_side, np.inf)
    use_top = top_ok & (t_top < t)
    t = np.where(use_top, t_top, t)

    normal_x = (ox + t_side * dx) / radius
    normal_y = (oy + t_side * dy) / radius
    # Light from the front-left, roughly where the camera is, so the visible walls stay bright.
    lambert = np.clip(-0.45 * normal_x - 0.89 * normal_y, 0.0, 1.0)
    shade = np.where(use_top, 1.0, 0.45 + 0.4 * lambert)
    return t, shade


class ObstacleRenderer:
    """Ray-casting renderer of the scene seen by one fixed pinhole camera.

    The ground and obstacles never move, so their first hits are cast once at construction; each frame
    only intersects the agent cylinder and paints the goal disc, which keeps a 64x64 frame well under a
    millisecond.
    """

    def __init__(
        self,
        layout: ObstacleLayout,
        image_size: int = 64,
        eye: tuple[float, float, float] = CAMERA_EYE,
        target: tuple[float, float, float] = (0.0, 0.0, 0.0),
        tan_half_fov: float = CAMERA_TAN_HALF_FOV,
    ) -> None:
        self.layout = layout
        self.height = self.width = int(image_size)
        intrinsics = pinhole_intrinsics(self.width, tan_half_fov)
        extrinsics = look_at_extrinsics(np.asarray(eye, dtype=np.float64), np.asarray(target))
        self.intrinsics = intrinsics.astype(np.float32)
        self.extrinsics = extrinsics.astype(np.float32)

        # Rays scaled to camera-frame z = 1, so a hit's ray parameter t is directly its depth.
        rays = camera_rays(torch.from_numpy(intrinsics), self.height, self.width).numpy().reshape(-1, 3)
        self._origin = extrinsics[:3, 3].copy()
        self._dirs = rays @ extrinsics[:3, :3].T
        if np.any(self._dirs[:, 2] >= 0.0):
            raise ValueError("camera sees above the horizon; the ground would not fill the image")

        t_ground = -self._origin[2] / self._dirs[:, 2]
        self._ground_xy = self._origin[None, :2] + t_ground[:, None] * self._dirs[:, :2]
        inside = np.all(np.abs(self._ground_xy) <= layout.workspace_half_extent, axis=-1)
        colour = np.where(inside[:, None], GROUND_COLOR, OUTSIDE_COLOR)
        depth = t_ground
        for center in layout.centers:
            t, shade = _cylinder_hit(self._origin, self._dirs, center, layout.obstacle_radius, layout.obstacle_height)
            closer = t < depth
            depth = np.where(closer, t, depth)
            colour = np.where(closer[:, None], OBSTACLE_COLOR * shade[:, None], colour)
        self._static_depth = depth
        self._static_colour = colour
        self._ground_visible = depth == t_ground

    def render(self, agent_pos: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8 and depth (H, W) float32 in metres for one scene state."""
        layout = self.layout
        colour = self._static_colour
        goal_offset = self._ground_xy - np.asarray(goal, dtype=np.float64)[None, :]
        on_goal = self._ground_visible & (np.einsum("nd,nd->n", goal_offset, goal_offset) <= layout.success_radius**2)
        colour = np.where(on_goal[:, None], GOAL_COLOR, colour)

        t_agent, shade = _cylinder_hit(
            self._origin,
            self._dirs,
            np.asarray(agent_pos, dtype=np.float64),
            layout.agent_radius,
            layout.agent_height,
        )
        closer = t_agent < self._static_depth
        depth = np.where(closer, t_agent, self._static_depth)
        colour = np.where(closer[:, None], AGENT_COLOR * shade[:, None], colour)

        rgb = np.clip(np.rint(colour), 0, 255).astype(np.uint8).reshape(self.height, self.width, 3)
        return rgb, depth.astype(np.float32).reshape(self.height, self.width)


class ObstacleReachEnv(gym.Env):
    """Reach the goal while avoiding the obstacles; see the module docstring for spaces.

    A collision (the swept step passing within obstacle radius + agent radius of a centre) ends the
    episode as a failure; ending a step within `success_radius` of the goal ends it as a success.
    `max_episode_steps=None` disables the env's own truncation: `gym.make` of the registered id does
    that and lets gymnasium's TimeLimit (which owns `_max_episode_steps` then) truncate instead.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        num_modes: int = 2,
        camera: bool = False,
        image_size: int = 64,
        max_episode_steps: int | None = 80,
        render_mode: str | None = "rgb_array",
        render_size: int = 128,
    ) -> None:
        super().__init__()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size!r}")
        self.layout = ObstacleLayout.preset(num_modes)
        self.num_modes = num_modes
        self.camera = camera
        self.image_size = image_size
        self.render_mode = render_mode
        self.render_size = render_size
        self._max_episode_steps = max_episode_steps
        self.task = TASK_NAME
        self.task_description = TASK_DESCRIPTION

        half = self.layout.workspace_half_extent
        self.action_space = spaces.Box(-half, half, shape=(2,), dtype=np.float32)
        obs_spaces: dict[str, spaces.Space] = {
            "agent_pos": spaces.Box(-half, half, shape=(2,), dtype=np.float32),
            "environment_state": spaces.Box(-half, half, shape=(2 + 2 * self.layout.num_obstacles,), dtype=np.float32),
        }
        self._renderer: ObstacleRenderer | None = None
        if camera:
            self._renderer = ObstacleRenderer(self.layout, image_size)
            size = (image_size, image_size)
            obs_spaces["pixels"] = spaces.Dict({CAMERA_NAME: spaces.Box(0, 255, shape=(*size, 3), dtype=np.uint8)})
            obs_spaces[f"depth.{CAMERA_NAME}"] = spaces.Box(0.0, np.inf, shape=(1, *size), dtype=np.float32)
            obs_spaces[f"camera.{CAMERA_NAME}.intrinsics"] = spaces.Box(-np.inf, np.inf, shape=(3, 3), dtype=np.float32)
            obs_spaces[f"camera.{CAMERA_NAME}.extrinsics"] = spaces.Box(-np.inf, np.inf, shape=(4, 4), dtype=np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        self._display_renderer: ObstacleRenderer | None = None

        self._agent = np.zeros(2)
        self._goal = np.array([0.0, self.layout.goal_y])
        self._steps = 0
        self._collided = False

    @property
    def agent_pos(self) -> np.ndarray:
        return self._agent.copy()

    @property
    def goal(self) -> np.ndarray:
        return self._goal.copy()

    def _observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {
            "agent_pos": self._agent.astype(np.float32),
            "environment_state": np.concatenate([self._goal, self.layout.centers.reshape(-1)]).astype(np.float32),
        }
        if self._renderer is not None:
            rgb, depth = self._renderer.render(self._agent, self._goal)
            obs["pixels"] = {CAMERA_NAME: rgb}
            obs[f"depth.{CAMERA_NAME}"] = depth[None]
            obs[f"camera.{CAMERA_NAME}.intrinsics"] = self._renderer.intrinsics.copy()
            obs[f"camera.{CAMERA_NAME}.extrinsics"] = self._renderer.extrinsics.copy()
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "is_success": bool(success),
            "collision": bool(self._collided),
            "distance_to_goal": float(np.linalg.norm(self._agent - self._goal)),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        start, goal = self.layout.sample_start_goal(self.np_random)
        # Explicit start/goal make scripted tests and replays reproducible without seeds.
        self._agent = np.asarray(options.get("start", start), dtype=np.float64).copy()
        self._goal = np.asarray(options.get("goal", goal), dtype=np.float64).copy()
        self._steps = 0
        self._collided = False
        return self._observation(), self._info(False)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        half = self.layout.workspace_half_extent
        target = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -half, half)
        delta = target - self._agent
        distance = float(np.linalg.norm(delta))
        if distance > self.layout.max_step:
            delta *= self.layout.max_step / distance
        new_pos = self._agent + delta

        collided, fraction = segment_circle_contact(
            self._agent, new_pos, self.layout.centers, self.layout.clearance_radius
        )
        self._steps += 1
        if collided:
            # Stop at the contact point so the rendered last frame shows where it hit.
            self._agent = self._agent + fraction * delta
            self._collided = True
            success = False
        else:
            self._agent = new_pos
            success = bool(np.linalg.norm(self._agent - self._goal) <= self.layout.success_radius)
        terminated = collided or success
        truncated = not terminated and self._max_episode_steps is not None and self._steps >= self._max_episode_steps
        reward = 1.0 if success else 0.0
        return self._observation(), reward, terminated, truncated, self._info(success)

    def render(self) -> np.ndarray:
        """RGB frame (render_size, render_size, 3) uint8 from the observation camera's viewpoint."""
        if self._display_renderer is None:
            self._display_renderer = ObstacleRenderer(self.layout, self.render_size)
        rgb, _ = self._display_renderer.render(self._agent, self._goal)
        return rgb
