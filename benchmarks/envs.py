"""Cost of the project's envs per step, which bounds how fast evaluation and demo generation can run.

    uv run python benchmarks/envs.py --threads 1

MetaWorld rows need the `metaworld` extra; they are left out without it.

Prints, per env, the median time of one call over `--repeats` calls after a warm-up, as JSON lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from lerobot_flowstep.envs.obstacle import ObstacleLayout, ObstacleRenderer


def median_ms(call: Callable[[int], object], repeats: int, warmup: int = 5) -> float:
    for i in range(warmup):
        call(i)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def obstacle_render(image_size: int, repeats: int) -> dict:
    renderer = ObstacleRenderer(ObstacleLayout.preset(4), image_size=image_size)
    goal = np.array([0.0, 0.85])
    ms = median_ms(lambda i: renderer.render(np.array([0.5, -0.9 + 0.009 * (i % 200)]), goal), repeats)
    return {"env": "flowstep_obstacle", "what": f"render RGB-D {image_size}x{image_size}", "median_ms": round(ms, 3)}


def metaworld_step(cameras: list[str], image_size: int, repeats: int) -> dict:
    """One `flowstep_metaworld` step with the expert's action: physics, then RGB-D of every camera."""
    from lerobot_flowstep.metaworld.env import MetaworldRGBDEnv

    with MetaworldRGBDEnv("push-v3", cameras=cameras, image_size=image_size) as env:
        env.reset(seed=0)

        def step(i: int) -> None:
            if i % 100 == 0:
                env.reset(seed=i)
            env.step(env.expert_action())

        ms = median_ms(step, repeats)
    size = f"{image_size}x{image_size}"
    return {
        "env": "flowstep_metaworld",
        "what": f"step, RGB-D {size} of {'+'.join(cameras)}",
        "median_ms": round(ms, 2),
    }


def metaworld_parts(image_size: int, repeats: int) -> list[dict]:
    """The step's two parts apart: MetaWorld's own step (physics and reward, no render) and one camera's RGB-D
    render, so that a slow step can be put on the simulator or on the GL backend."""
    import metaworld.policies

    from lerobot_flowstep.metaworld.env import MetaworldRGBDEnv

    with MetaworldRGBDEnv("push-v3", cameras=["corner2"], image_size=image_size) as env:
        expert = getattr(metaworld.policies, env.task.expert)()
        env.reset(seed=0)
        world = env.unwrapped_metaworld
        raw = world._get_obs()  # MetaWorld's own observation, which its scripted policy reads

        def physics(i: int) -> None:
            nonlocal raw
            if i % 100 == 0:
                env.reset(seed=i)
                raw = world._get_obs()
            raw = world.step(np.clip(expert.get_action(raw), -1.0, 1.0))[0]

        physics_ms = median_ms(physics, repeats)
        render_ms = median_ms(lambda i: env.renderer.render(world.data, "corner2"), repeats)
    return [
        {
            "env": "flowstep_metaworld",
            "what": "MetaWorld's step alone (physics, reward)",
            "median_ms": round(physics_ms, 2),
        },
        {
            "env": "flowstep_metaworld",
            "what": f"render alone, RGB-D {image_size}x{image_size} of corner2",
            "median_ms": round(render_ms, 2),
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for row in (obstacle_render(64, args.repeats), obstacle_render(128, args.repeats)):
        print(json.dumps(row))
    if importlib.util.find_spec("metaworld") is None:
        print(json.dumps({"env": "flowstep_metaworld", "skipped": "the metaworld extra is not installed"}))
        return
    for cameras, size in ((["corner2"], 128), (["corner2"], 84), (["corner2", "corner3"], 128)):
        print(json.dumps(metaworld_step(cameras, size, args.repeats)))
    for row in metaworld_parts(128, args.repeats):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
