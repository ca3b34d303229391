"""`lerobot-flowstep demo`: the main job, end to end on the embedded multi-modal task.

Generate expert demonstrations (a LeRobotDataset), train the CFM teacher with `lerobot-train`, evaluate it
with `lerobot-eval` on the registered `flowstep_obstacle` env, compare with a random policy, and write a
JSON report. Every step goes through LeRobot's own commands, exactly as a user would run them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
from tqdm import trange

from .datasets.obstacle_dataset import generate_obstacle_dataset
from .envs import OBSTACLE_REACH_ID
from .lerobot_commands import eval_args, lerobot_eval
from .policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from .training import train_policy_on_dataset

DATASET_REPO_ID = "local/flowstep_obstacle"


@dataclass
class DemoSettings:
    output_dir: Path = Path("outputs/demo")
    num_modes: int = 2
    num_episodes: int = 200
    teacher_steps: int = 2000
    learning_rate: float = 1e-3
    batch_size: int = 64
    eval_episodes: int = 50
    eval_batch_size: int = 10
    seed: int = 0


def random_policy_success(num_modes: int, episodes: int, seed: int) -> float:
    """Success rate of uniformly random target positions: the floor any learned policy must clear."""
    env = gym.make(OBSTACLE_REACH_ID, num_modes=num_modes)
    env.action_space.seed(seed)
    successes = 0
    for episode in trange(episodes, desc="random policy", leave=False):
        env.reset(seed=seed + episode)
        done, info = False, {}
        while not done:
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
        successes += bool(info.get("is_success", False))
    env.close()
    return successes / episodes


def run_demo(settings: DemoSettings) -> dict:
    out = settings.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    data_root = out / f"data_{settings.num_modes}modes_{settings.num_episodes}ep_seed{settings.seed}"
    start = time.perf_counter()
    if not data_root.exists():
        generate_obstacle_dataset(
            data_root,
            repo_id=DATASET_REPO_ID,
            num_episodes=settings.num_episodes,
            num_modes=settings.num_modes,
            seed=settings.seed,
        )
    timings["dataset_s"] = time.perf_counter() - start

    teacher_dir = out / "teacher"
    start = time.perf_counter()
    teacher_config = FlowstepTeacherConfig(device="cpu", optimizer_lr=settings.learning_rate)
    _, teacher_checkpoint, _ = train_policy_on_dataset(
        teacher_config,
        DATASET_REPO_ID,
        data_root,
        teacher_dir,
        steps=settings.teacher_steps,
        batch_size=settings.batch_size,
        seed=settings.seed,
        desc="train flowstep_teacher",
    )
    timings["teacher_train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    eval_seed = 100_000 + settings.seed  # disjoint from the seeds that generated the demonstrations
    info = lerobot_eval(
        [
            *eval_args(
                teacher_checkpoint, "flowstep_obstacle", settings.eval_episodes, settings.eval_batch_size, eval_seed
            ),
            f"--env.num_modes={settings.num_modes}",
        ],
        out / "eval_teacher",
        out / "logs" / "eval_teacher.log",
        desc="lerobot-eval flowstep_teacher",
    )
    timings["teacher_eval_s"] = time.perf_counter() - start

    teacher_success = info["overall"]["pc_success"] / 100.0
    random_success = random_policy_success(settings.num_modes, settings.eval_episodes, eval_seed)
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "teacher": {"success_rate": teacher_success, "checkpoint": str(teacher_checkpoint)},
        "random_policy": {"success_rate": random_success},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"Report: {out / 'report.json'}")
    return report


def format_table(report: dict) -> str:
    rows = [
        ("flowstep_teacher", report["teacher"]["success_rate"]),
        ("random", report["random_policy"]["success_rate"]),
    ]
    lines = [f"{'policy':<20}{'success':>10}", "-" * 30]
    lines += [f"{name:<20}{rate:>10.1%}" for name, rate in rows]
    return "\n".join(lines)
