"""A QA check of RLBench camera geometry: do an episode's cameras, back-projected to the world frame, agree
on one scene (`lerobot-flowstep convert rlbench --check-geometry`)?"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lerobot_flowstep.core.geometry import depth_to_world_points, project_points
from lerobot_flowstep.rlbench.conventions import (
    DEFAULT_BOUNDS_LOW,
    RLBENCH_CAMERAS,
    check_cameras,
    decode_depth,
    opencv_camera,
)
from lerobot_flowstep.rlbench.demo_files import LOW_DIM_PICKLE, RLBenchEpisode, load_observations, read_misc, read_png


@dataclass
class GeometryReport:
    """Whether an episode's cameras agree on the scene (see `check_rlbench_geometry`)."""

    episode: str
    frame: int
    table_height: dict[str, float | None]  # cam -> fitted plane height (m), None if the table is not seen
    table_tilt_deg: dict[str, float | None]  # cam -> angle between the fitted normal and +z
    overlap_median: dict[tuple[str, str], float]  # (a, b) -> median distance (m) of a's points to b's cloud
    height_tolerance: float = 0.005
    tilt_tolerance_deg: float = 1.0
    overlap_tolerance: float = 0.01

    @property
    def height_spread(self) -> float:
        heights = [h for h in self.table_height.values() if h is not None]
        return max(heights) - min(heights) if heights else math.inf

    @property
    def passed(self) -> bool:
        tilts = [t for t in self.table_tilt_deg.values() if t is not None]
        return (
            len(tilts) >= 2
            and self.height_spread <= self.height_tolerance
            and max(tilts) <= self.tilt_tolerance_deg
            and all(d <= self.overlap_tolerance for d in self.overlap_median.values())
        )

    def format(self) -> str:
        lines = [f"geometry check of {self.episode}, frame {self.frame}: {'PASS' if self.passed else 'FAIL'}"]
        for cam, height in self.table_height.items():
            tilt = self.table_tilt_deg[cam]
            lines.append(
                f"  table plane seen by {cam:<15} "
                + ("not found" if height is None else f"z = {height:.4f} m, tilt {tilt:.2f} deg")
            )
        lines.append(
            f"  table height spread: {self.height_spread * 1000:.2f} mm (tolerance {self.height_tolerance * 1000:.0f})"
        )
        for (a, b), distance in self.overlap_median.items():
            lines.append(f"  {a} -> {b}: median distance to the other cloud {distance * 1000:.2f} mm")
        return "\n".join(lines)


def _table_plane(points: np.ndarray) -> tuple[float, float] | None:
    """Height and tilt (deg) of the dominant horizontal surface among points (N, 3), or None."""
    if len(points) < 200:
        return None
    z = points[:, 2]
    bins = np.arange(z.min(), z.max() + 0.002, 0.002)
    if len(bins) < 2:
        bins = np.array([z.min() - 0.001, z.max() + 0.001])
    counts, edges = np.histogram(z, bins=bins)
    peak = 0.5 * (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1])
    inliers = points[np.abs(z - peak) < 0.006]
    if len(inliers) < 100:
        return None
    centred = inliers - inliers.mean(axis=0)
    normal = np.linalg.svd(centred, full_matrices=False)[2][-1]
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    return float(inliers[:, 2].mean()), tilt


def check_rlbench_geometry(
    episode_dir: Path | str,
    cameras: Sequence[str] = RLBENCH_CAMERAS,
    frame: int = 0,
    bounds_low: Sequence[float] = DEFAULT_BOUNDS_LOW,
    bounds_high: Sequence[float] = (0.7, 0.5, 1.2),
    max_points: int = 4000,
) -> GeometryReport:
    """Back-project one frame of every camera to the world frame and check that they describe one scene.

    - Table plane: in each camera's cloud (cropped to the workspace box), the dominant horizontal surface
      is fitted; every camera must find it at the same height (spread <= 5 mm) and level (tilt <= 1 deg).
    - Overlap: for each camera pair (a, b), a's workspace points that fall inside b's image are matched to
      their nearest neighbour in b's cloud; the median distance must be <= 1 cm (a pixel at 1.5 m is ~8 mm).
      Occlusions only affect the tail, hence the median.
    """
    episode_dir = Path(episode_dir)
    cameras = check_cameras(cameras, "cameras")
    episode = RLBenchEpisode(episode_dir.parents[2].name, episode_dir, episode_dir.parents[1])
    pickle_path = episode_dir / LOW_DIM_PICKLE
    observations = load_observations(pickle_path, episode.name)
    if not 0 <= frame < len(observations):
        raise ValueError(f"frame {frame} is outside the episode's {len(observations)} frames")
    obs = observations[frame]
    low = torch.as_tensor(bounds_low, dtype=torch.float64)
    high = torch.as_tensor(bounds_high, dtype=torch.float64)
    clouds, params, depths = {}, {}, {}
    for cam in cameras:
        k, t = opencv_camera(
            read_misc(obs, f"{cam}_camera_intrinsics", (3, 3), episode.name, pickle_path, frame),
            read_misc(obs, f"{cam}_camera_extrinsics", (4, 4), episode.name, pickle_path, frame),
        )
        near = float(read_misc(obs, f"{cam}_camera_near", (), episode.name, pickle_path, frame))
        far = float(read_misc(obs, f"{cam}_camera_far", (), episode.name, pickle_path, frame))
        depth = decode_depth(read_png(episode_dir / f"{cam}_depth" / f"{frame}.png", episode.name), near, far)
        k_t, t_t = torch.from_numpy(k), torch.from_numpy(t)
        points, valid = depth_to_world_points(torch.from_numpy(depth.astype(np.float64)), k_t, t_t)
        inside = valid & ((points >= low) & (points <= high)).all(-1)
        clouds[cam] = points[inside]
        params[cam] = (k_t, t_t)
        depths[cam] = depth

    heights, tilts = {}, {}
    for cam in cameras:
        plane = _table_plane(clouds[cam].numpy())
        heights[cam], tilts[cam] = (None, None) if plane is None else plane

    overlap = {}
    for a in cameras:
        stride = max(1, len(clouds[a]) // max_points)
        sample = clouds[a][::stride]
        for b in cameras:
            if a == b or len(clouds[b]) == 0 or len(sample) == 0:
                continue
            k_b, t_b = params[b]
            pixels, z = project_points(sample, k_b, t_b)
            h, w = depths[b].shape
            seen = (z > 0) & (pixels[:, 0] >= -0.5) & (pixels[:, 0] < w - 0.5) & (pixels[:, 1] >= -0.5)
            seen &= pixels[:, 1] < h - 0.5
            if int(seen.sum()) < 50:
                continue
            distances = torch.cat(
                [torch.cdist(chunk, clouds[b]).min(dim=1).values for chunk in sample[seen].split(1024)]
            )
            overlap[(a, b)] = float(distances.median())
    return GeometryReport(episode.name, frame, heights, tilts, overlap)
