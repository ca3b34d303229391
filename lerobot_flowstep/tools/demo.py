"""`lerobot-flowstep demo`: the main job, end to end on the embedded multi-modal task.

1. expert demonstrations -> a LeRobotDataset (`flowstep_obstacle`, 2 or 4 modes);
2. the CFM teacher, trained on it;
3. teacher samples cached once per frame (accurate solver: the student inherits their error);
4. the one-step IMLE student, distilled from the cache; the regression baseline (same network, L2);
5. every method reloaded from its saved checkpoint and evaluated with LeRobot's `eval_policy` on the same
   seeded episodes: teacher (N steps), teacher with 1 Euler step (naive one-step CFM), student (its default
   16 candidates in one batched pass with the consistency and the density rule, and a single sample),
   regression;
6. chunk latency at batch 1, a table, a JSON report and the mode-collapse picture.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from tqdm import trange

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
from lerobot_flowstep.envs import OBSTACLE_REACH_ID, ObstacleLayout
from lerobot_flowstep.policies.flowstep_regression import FlowstepRegressionConfig
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig
from lerobot_flowstep.tools.cache_teacher import cache_from_samples
from lerobot_flowstep.tools.checkpoints import load_checkpoint
from lerobot_flowstep.tools.diagnostics import rollout_mode_report
from lerobot_flowstep.tools.latency import chunk_latency, measure_latency
from lerobot_flowstep.tools.plots import plot_trajectories
from lerobot_flowstep.tools.training import load_samples, train_policy_on_dataset

DATASET_REPO_ID = "local/flowstep_obstacle"


@dataclass
class DemoSettings:
    output_dir: Path = Path("outputs/demo")
    num_modes: int = 2
    num_episodes: int = 200
    seed: int = 0
    network: NetworkConfig = field(default_factory=lambda: NetworkConfig(hidden_dim=256, num_blocks=3))
    batch_size: int = 64
    teacher_steps: int = 2000
    teacher_lr: float = 1e-3
    teacher_inference_steps: int = 10
    cache_samples: int = 16
    cache_steps: int = 10
    cache_solver: str = "heun"
    student_steps: int = 1500
    student_lr: float = 3e-4
    regression_steps: int = 1000
    eval_episodes: int = 200
    latency_repeats: int = 200
    # The demo's networks are small: one thread is faster than two contending ones on a 2-core machine.
    threads: int = 1


def random_policy_success(num_modes: int, episodes: int, seed: int) -> float:
    """Success rate of uniformly random target positions: the floor any learned policy must clear."""
    successes = 0
    with gym.make(OBSTACLE_REACH_ID, num_modes=num_modes) as env:
        env.action_space.seed(seed)
        for episode in trange(episodes, desc="random policy", leave=False):
            env.reset(seed=seed + episode)
            done, info = False, {}
            while not done:
                _, _, terminated, truncated, info = env.step(env.action_space.sample())
                done = terminated or truncated
            successes += bool(info.get("is_success", False))
    return successes / episodes


def obstacle_chunk_latency(policy, preprocessor, num_modes: int, repeats: int) -> dict:
    """Batch-1 latency of one chunk on an ObstacleReach observation."""
    from lerobot.envs.utils import preprocess_observation

    with gym.make(OBSTACLE_REACH_ID, num_modes=num_modes) as env:
        obs, _ = env.reset(seed=0)
    batch = preprocessor(preprocess_observation({k: v[None] for k, v in obs.items()}))
    return chunk_latency(policy, batch, repeats=repeats).as_dict()


def run_demo(settings: DemoSettings) -> dict:
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    out = settings.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    data_root = out / f"data_{settings.num_modes}modes_{settings.num_episodes}ep_seed{settings.seed}"
    if not data_root.exists():
        generate_obstacle_dataset(
            data_root, DATASET_REPO_ID, settings.num_episodes, settings.num_modes, seed=settings.seed
        )
    timed("dataset", start)

    common = {"device": "cpu", "network": settings.network}
    start = time.perf_counter()
    teacher_cfg = FlowstepTeacherConfig(
        **common, optimizer_lr=settings.teacher_lr, num_inference_steps=settings.teacher_inference_steps
    )
    meta = LeRobotDatasetMetadata(DATASET_REPO_ID, root=data_root)
    samples = load_samples(DATASET_REPO_ID, data_root, teacher_cfg, meta)
    teacher, teacher_ckpt, _ = train_policy_on_dataset(
        teacher_cfg, DATASET_REPO_ID, data_root, out / "teacher", settings.teacher_steps, settings.batch_size,
        settings.seed, "train flowstep_teacher", samples,
    )  # fmt: skip
    timed("teacher_train", start)

    start = time.perf_counter()
    cache_path = out / "teacher" / "teacher_samples.safetensors"
    cache_from_samples(
        teacher, str(teacher_ckpt), samples, cache_path, settings.cache_samples, settings.cache_steps,
        settings.cache_solver, settings.seed, dataset_meta=meta,
    )  # fmt: skip
    timed("teacher_cache", start)

    start = time.perf_counter()
    student_cfg = ImleStudentConfig(
        device="cpu",
        teacher_path=str(teacher_ckpt),
        teacher_cache_path=str(cache_path),
        num_teacher_samples=settings.cache_samples,
        optimizer_lr=settings.student_lr,
    )
    _, student_ckpt, _ = train_policy_on_dataset(
        student_cfg, DATASET_REPO_ID, data_root, out / "student", settings.student_steps, settings.batch_size,
        settings.seed, "distill imle_student", samples,
    )  # fmt: skip
    timed("student_distill", start)

    start = time.perf_counter()
    regression_cfg = FlowstepRegressionConfig(**common, optimizer_lr=settings.teacher_lr)
    _, regression_ckpt, _ = train_policy_on_dataset(
        regression_cfg, DATASET_REPO_ID, data_root, out / "regression", settings.regression_steps,
        settings.batch_size, settings.seed, "train regression baseline", samples,
    )  # fmt: skip
    timed("regression_train", start)

    methods = {
        f"teacher ({settings.teacher_inference_steps} steps)": (teacher_ckpt, {}),
        "1-step CFM": (teacher_ckpt, {"num_inference_steps": 1}),
        "IMLE student (1 sample)": (student_ckpt, {"num_inference_candidates": 1}),
        "IMLE student": (student_ckpt, {}),
        "IMLE student (density rule)": (student_ckpt, {"candidate_selection": "density"}),
        "regression": (regression_ckpt, {}),
    }
    eval_seed = 100_000 + settings.seed  # disjoint from the seeds that generated the demonstrations
    results, trajectories = {}, {}
    start = time.perf_counter()
    for name, (checkpoint, overrides) in methods.items():
        policy, pre, post = load_checkpoint(checkpoint, **overrides)
        stats, trajs = rollout_mode_report(policy, pre, post, settings.num_modes, settings.eval_episodes, eval_seed)
        latency = obstacle_chunk_latency(policy, pre, settings.num_modes, settings.latency_repeats)
        results[name] = {**stats.as_dict(), "latency": latency, "checkpoint": str(checkpoint), **overrides}
        trajectories[name] = trajs
    student_policy, _, _ = load_checkpoint(student_ckpt)
    results["IMLE student"]["bare_forward_latency"] = bare_generator_latency(student_policy, settings.latency_repeats)
    timed("evaluation", start)
    results["random"] = {"success_rate": random_policy_success(settings.num_modes, settings.eval_episodes, eval_seed)}

    subtitles = {
        n: f"success {r['success_rate']:.0%}, off-manifold {r['off_manifold']:.0%}"
        for n, r in results.items()
        if n in trajectories
    }
    picture = plot_trajectories(
        trajectories, ObstacleLayout.preset(settings.num_modes), out / "trajectories.png", subtitles
    )
    report = {
        "command": shlex.join(["lerobot-flowstep", *sys.argv[1:]]),
        "settings": json.loads(json.dumps(asdict(settings), default=str)),
        "results": results,
        "timings_s": timings,
        "machine": machine_description(),
        "trajectories_png": str(picture),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(format_table(results, settings.num_modes))
    print(f"Report: {out / 'report.json'}\nPicture: {picture}")
    return report


def bare_generator_latency(student, repeats: int) -> dict:
    """One forward pass of the student's generator network alone, on a fixed condition: the physical
    limit of any one-step policy with this network."""
    cond = torch.zeros(1, student.encoder.cond_dim)
    z = torch.zeros(1, student.config.horizon, student.config.action_dim)
    with torch.inference_mode():  # t = 0.0 as `generate` passes it
        return measure_latency(lambda: student.generator(z, 0.0, cond), repeats=repeats).as_dict()


def machine_description() -> str:
    import platform

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {device}"


def format_table(results: dict, num_modes: int) -> str:
    header = f"{'method':<29}{'success':>9}{'modes':>8}{'entropy':>9}{'off-manif.':>12}{'chunk ms':>10}{'Hz':>9}"
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        if "latency" not in r:
            lines.append(f"{name:<29}{r['success_rate']:>9.1%}")
            continue
        lines.append(
            f"{name:<29}{r['success_rate']:>9.1%}{r['modes_covered']:>5}/{num_modes:<2}{r['mode_entropy']:>9.3f}"
            f"{r['off_manifold']:>12.1%}{r['latency']['median_ms']:>10.3f}{r['latency']['hz']:>9.0f}"
        )
    return "\n".join(lines)
