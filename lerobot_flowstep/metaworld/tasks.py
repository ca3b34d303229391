"""MetaWorld's task names, descriptions, difficulty groups and scripted experts, as LeRobot lists them.

Read from LeRobot's own `lerobot/envs/metaworld_config.json`, as data: importing `lerobot.envs.metaworld` would
import MetaWorld and MuJoCo, which this package keeps optional.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

DIFFICULTIES = ("easy", "medium", "hard", "very_hard")


@dataclass(frozen=True)
class MetaworldTask:
    name: str  # e.g. "push-v3"
    description: str
    difficulty: str
    expert: str  # class name in `metaworld.policies`


@functools.cache
def metaworld_tasks() -> dict[str, MetaworldTask]:
    data = json.loads(resources.files("lerobot.envs").joinpath("metaworld_config.json").read_text())
    difficulty = {task: group for group, tasks in data["DIFFICULTY_TO_TASKS"].items() for task in tasks}
    return {
        name: MetaworldTask(name, description, difficulty.get(name, "unknown"), data["TASK_POLICY_MAPPING"][name])
        for name, description in data["TASK_DESCRIPTIONS"].items()
    }


def metaworld_task(name: str) -> MetaworldTask:
    """The task called `name` (`push-v3`; LeRobot's `metaworld-push-v3` and a missing `-v3` are accepted)."""
    tasks = metaworld_tasks()
    key = name.removeprefix("metaworld-")
    if key not in tasks and f"{key}-v3" in tasks:
        key = f"{key}-v3"
    if key not in tasks:
        listed = ", ".join(sorted(tasks))
        raise ValueError(f"Unknown MetaWorld task '{name}'. Known tasks ({len(tasks)}): {listed}.")
    return tasks[key]
