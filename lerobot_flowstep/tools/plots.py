"""Figures: the mode-collapse picture over the obstacle scene, the PushT benchmark bars and its distillation
diagnosis."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and robots have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from lerobot_flowstep.envs import ObstacleLayout, classify_trajectory  # noqa: E402


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


def _interval_bars(ax, names: list[str], values: list[float], intervals: list[tuple[float, float]], **kwargs) -> None:
    errors = np.array([[v - lo, hi - v] for v, (lo, hi) in zip(values, intervals, strict=True)]).T
    ax.barh(names, values, xerr=np.clip(errors, 0, None), capsize=3, **kwargs)


def plot_benchmark(results: dict[str, dict], disturbance: dict[str, dict], path: Path) -> Path:
    """PushT benchmark: mean max reward per method with its 95 % interval, success rate in the label; and the
    same with the block pushed mid-episode, each policy re-planning as often as its latency allows."""
    n_right = max(1, 2 * len(disturbance))
    fig, (left, right) = plt.subplots(
        2, 1, figsize=(10, 0.4 * (len(results) + n_right) + 2.5), height_ratios=[len(results), n_right]
    )
    rows = [(name, results[name]) for name in list(results)[::-1]]
    _interval_bars(
        left,
        [f"{name}  [success {r['success_rate']:.0%}]" for name, r in rows],
        [r["mean_max_reward"] for _, r in rows],
        [r["mean_max_reward_ci95"] for _, r in rows],
        color="#1f5fbf",
        alpha=0.8,
    )
    left.set_xlim(0, 1)
    left.set_xlabel("mean max reward (coverage / 0.95, capped at 1)")
    left.set_title("PushT, keypoint observations", fontsize=10)

    bars = []
    for name, row in list(disturbance.items())[::-1]:
        for key, color in (("disturbed", "#cd4137"), ("undisturbed", "#1f5fbf")):
            r = row[key]
            label = f"{name}, {key}  [success {r['success_rate']:.0%}]"
            bars.append((label, r["mean_max_reward"], r["mean_max_reward_ci95"], color))
    if bars:
        labels, values, intervals, colors = zip(*bars, strict=True)
        _interval_bars(right, list(labels), list(values), list(intervals), color=list(colors), alpha=0.8)
    right.set_xlim(0, 1)
    right.set_xlabel("mean max reward")
    right.set_title("Block pushed mid-episode (red) or not (blue)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_distillation_curves(
    chamfer: dict[int, dict[str, float]],
    references: dict[str, dict[str, float]],
    success: dict[int, dict],
    success_references: dict[str, dict],
    path: Path,
) -> Path:
    """Distillation as it proceeds: the student's samples against the teacher's (Chamfer coverage and fidelity,
    energy distance, spread ratio) per distillation step, and closed-loop success with its 95 % interval;
    `references` and `success_references` are drawn as horizontal lines (e.g. the teacher's own sampler,
    one-step CFM)."""
    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    steps = sorted(chamfer)
    panels = (
        (("coverage", "fidelity"), "Chamfer (normalized actions)", "Chamfer: coverage (o), fidelity (s)", True),
        (("energy_distance",), "energy distance", "energy distance (0 = a faithful copy)", False),
        (("spread_ratio",), "spread ratio", "spread: policy / reference", False),
    )
    for ax, (keys, ylabel, title, log) in zip(axes[:3], panels, strict=True):
        for key, marker in zip(keys, ("o", "s"), strict=False):
            label = "student (1 sample)" if key == keys[0] else None
            ax.plot(steps, [chamfer[s][key] for s in steps], f"{marker}-", color="k", label=label)
            for color, (name, ref) in zip(colors, references.items(), strict=False):
                ax.axhline(
                    ref[key], color=color, linestyle="--" if marker == "o" else ":", label=name if label else None
                )
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("distillation step")
        ax.set_ylabel(ylabel)
        ax.set_title(title + ", held-out frames", fontsize=9)
    axes[0].legend(fontsize=7)
    ax = axes[3]
    if success:
        steps = sorted(success)
        rates = [success[s]["success_rate"] for s in steps]
        errors = np.array(
            [
                [r - success[s]["success_ci95"][0], success[s]["success_ci95"][1] - r]
                for s, r in zip(steps, rates, strict=True)
            ]
        ).T
        ax.errorbar(
            steps, rates, yerr=np.clip(errors, 0, None), fmt="o-", color="k", capsize=3, label="student (1 sample)"
        )
    for color, (name, ref) in zip(colors, success_references.items(), strict=False):
        ax.axhline(ref["success_rate"], color=color, linestyle="--", label=f"{name} ({ref['episodes']} episodes)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("distillation step")
    ax.set_ylabel("success rate")
    ax.set_title("closed-loop success (lerobot-eval)", fontsize=9)
    ax.legend(fontsize=7)
    for ax in axes:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_recipe_variants(
    curves: dict[str, dict[int, dict[str, float]]], references: dict[str, dict[str, float]], path: Path
) -> Path:
    """Distillation recipes side by side: energy distance, spread ratio and paired error (against the teacher's
    deployed sampler, where measured) of each student variant's samples, per distillation step, with
    `references` (e.g. the teacher's deployed sampler, or the teacher at fewer steps) as horizontal lines. The
    spread is where Chamfer-only recipes drift; the paired error is what ranks the teacher's own samplers, and
    its value on training frames (`paired_error_train`, where measured) shows how much of it is generalisation."""
    panels = [
        ("energy_distance", "energy distance (0 = a faithful copy)"),
        ("spread_ratio", "spread: policy / reference"),
        ("paired_error_deployed", "paired error against the deployed sampler"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("--", ":", "-.", (0, (1, 3)), (0, (5, 1)), (0, (3, 1, 1, 1)))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, (name, curve) in enumerate(curves.items()):
            steps = [s for s in sorted(curve) if key in curve[s]]
            color = colors[i % len(colors)]
            ax.plot(
                steps, [curve[s][key] for s in steps], "o-", color=color, label=name if key == panels[0][0] else None
            )
            if key == "paired_error_deployed":
                # The same error on frames the student was trained on: the gap between the two lines is
                # what fails to generalise to new observations.
                train = [s for s in sorted(curve) if "paired_error_train" in curve[s]]
                ax.plot(train, [curve[s]["paired_error_train"] for s in train], "o--", color=color, mfc="none")
        for i, (name, ref) in enumerate(references.items()):
            if key in ref:
                label = name if key == panels[0][0] else None
                ax.axhline(ref[key], color="gray", linestyle=styles[i % len(styles)], label=label)
        ax.set_xlabel("distillation step")
        train_note = " (hollow, dashed: training frames)" if key == "paired_error_deployed" else ""
        ax.set_title(f"{title},\nheld-out frames{train_note}", fontsize=9)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    # Below the panels: the run names are long and would cover the curves.
    fig.legend(loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_error_by_distance(curves: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Paired error against each held-out frame's distance to the nearest trained frame
    (`diagnostics.paired_error_by_distance`), one line per policy, log scale: a policy that only fits its
    training frames rises faster than the teacher's own few-step samplers do."""
    fig, ax = plt.subplots(figsize=(8, 7.5))
    runs = [name for name in curves if not name.startswith(("teacher", "one-step"))]
    shared = os.path.commonprefix(runs) if len(runs) > 1 else ""
    for name, binned in curves.items():
        edges = binned["edges"]
        centres = [(lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        if name.startswith(("teacher", "one-step")):  # the teacher's samplers: gray, named at their right end
            ax.plot(centres, binned["errors"], "s--", color="gray", alpha=0.7)
            ax.annotate(name, (centres[-1], binned["errors"][-1]), xytext=(6, 0), textcoords="offset points",
                        fontsize=7, color="dimgray", va="center")  # fmt: skip
        else:  # run names are long: the part every run shares is said once, in the legend's title
            ax.plot(centres, binned["errors"], "o-", label=textwrap.fill(name[len(shared) :] or name, 110))
    for edge in next(iter(curves.values()))["edges"][1:-1]:
        ax.axvline(edge, color="lightgray", linewidth=0.8)
    ax.set_xlim(right=ax.get_xlim()[1] * 1.3)  # room for the samplers' names
    ax.set_yscale("log")
    ax.set_xlabel("distance to the nearest trained frame (normalized observation history; bins of equal count)")
    ax.set_ylabel("paired error against the deployed sampler")
    ax.set_title("Held-out PushT frames: where the one-step map loses the teacher's", fontsize=10)
    # Below the axes: the run names are long.
    fig.legend(loc="lower center", ncol=1, fontsize=7, frameon=False, title=f"{shared}..." if shared else None,
               title_fontsize=7)  # fmt: skip
    fig.tight_layout(rect=(0, 0.3, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_success_against_paired_error(
    points: dict[str, dict], deployed: dict | None, path: Path, title: str = "PushT, one sample per chunk"
) -> Path:
    """Closed-loop success (95 % interval) of each sampler against its paired error with the teacher's deployed
    sampler, on held-out frames and on trained frames: the teacher at fewer steps (gray squares) shows what error
    a success costs, each student (a dot) where its recipe landed. `points`: name -> `success_rate`,
    `success_ci95`, `episodes`, `paired_error_deployed`, `paired_error_train` and `teacher_sampler` (bool);
    `deployed`: the deployed teacher's success, drawn as a line (its own paired error is zero)."""
    panels = [("paired_error_deployed", "held-out frames"), ("paired_error_train", "trained frames")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 7.5), sharey=True)
    students = [n for n, p in points.items() if not p["teacher_sampler"]]
    shared = os.path.commonprefix(students) if len(students) > 1 else ""
    markers = "o^vD<>ph*"
    # Gray is the teacher's samplers' colour.
    colors = [c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if to_hex(c) != "#7f7f7f"]
    for ax, (key, frames) in zip(axes, panels, strict=True):
        for i, (name, p) in enumerate(points.items()):
            if key not in p:
                continue
            lo, hi = p["success_ci95"]
            y = p["success_rate"]
            student = {"color": colors[i % len(colors)], "marker": markers[i % len(markers)]}
            style = {"color": "gray", "marker": "s"} if p["teacher_sampler"] else student
            # The teacher's samplers are named beside their squares; the students' long names go to the legend.
            label = None if p["teacher_sampler"] or key != panels[0][0] else name[len(shared) :] or name
            ax.errorbar(p[key], y, yerr=[[y - lo], [hi - y]], capsize=3, linestyle="none",
                        label=label and textwrap.fill(label, 130), **style)  # fmt: skip
            if p["teacher_sampler"]:
                ax.annotate(name.removeprefix("teacher, "), (p[key], y), xytext=(5, 4), textcoords="offset points",
                            fontsize=7, color="dimgray")  # fmt: skip
        if deployed is not None:
            ax.axhline(deployed["success_rate"], color="black", linestyle="--", linewidth=1)
            ax.axhspan(*deployed["success_ci95"], color="black", alpha=0.07)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"paired error against the deployed sampler, {frames}")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.0%}"))
    episodes = "/".join(str(n) for n in sorted({p["episodes"] for p in points.values()}))
    axes[0].set_ylabel(f"success, {episodes} seeded episodes")
    fig.suptitle(f"{title}: success against paired error (dashed: the deployed teacher, with its interval)",
                 fontsize=10)  # fmt: skip
    fig.legend(loc="lower center", ncol=1, fontsize=7, frameon=False, title=f"{shared}..." if shared else None,
               title_fontsize=7)  # fmt: skip
    fig.tight_layout(rect=(0, 0.3, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
