"""The mode-collapse picture: sampled trajectories of each method over the obstacle scene."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and robots have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .envs import ObstacleLayout, classify_trajectory  # noqa: E402


def plot_trajectories(
    trajectories: dict[str, list[np.ndarray]],
    layout: ObstacleLayout,
    path: Path,
    subtitles: dict[str, str] | None = None,
) -> Path:
    """One panel per method; on-manifold trajectories in blue, off-manifold (averaged, colliding) in red."""
    names = list(trajectories)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for center in layout.centers:
            ax.add_patch(plt.Circle(center, layout.obstacle_radius, color="#cd4137", alpha=0.8))
        for traj in trajectories[name]:
            off = classify_trajectory(traj[None], layout)[0] < 0
            ax.plot(traj[:, 0], traj[:, 1], color="#d62728" if off else "#1f5fbf", alpha=0.35, lw=1)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name + (f"\n{subtitles[name]}" if subtitles and name in subtitles else ""), fontsize=9)
    fig.suptitle("Closed-loop trajectories (blue: a mode, red: off-manifold / collision)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
