"""Cost of the project's envs per step, which bounds how fast evaluation and demo generation can run.

    uv run python benchmarks/envs.py --threads 1

Prints, per env, the median time of one call over `--repeats` calls after a warm-up, as JSON lines.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for row in (obstacle_render(64, args.repeats), obstacle_render(128, args.repeats)):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
