"""A fingerprint of MetaWorld's physics and our renderer on the installed MetaWorld and MuJoCo: a hash of the states
and RGB-D images of 150 expert steps on two tasks, to compare versions bit for bit.

    uv run python benchmarks/metaworld_versions.py                          # uv.lock's metaworld 3.0.0, MuJoCo 3.3.0
    uv run --with metaworld==3.1.1 python benchmarks/metaworld_versions.py  # 3.1.1 pins MuJoCo 3.3.0
    uv run --with mujoco==3.16.0 python benchmarks/metaworld_versions.py    # the top of the extra's MuJoCo range

Prints one JSON line: the versions, each task's expert success, and the two hashes.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version

from lerobot_flowstep.metaworld.env import MetaworldRGBDEnv

TASKS = ("button-press-v3", "pick-place-v3")


def main() -> None:
    states, images = hashlib.sha256(), hashlib.sha256()
    success = {}
    for task in TASKS:
        with MetaworldRGBDEnv(task, cameras=["corner2"], image_size=64) as env:
            obs, _ = env.reset(seed=3)
            success[task] = False
            for t in range(150):
                obs, _, _, _, info = env.step(env.expert_action())
                states.update(obs["agent_pos"].tobytes())
                success[task] |= info["is_success"]
                if t % 50 == 0:
                    images.update(obs["pixels"]["corner2"].tobytes())
                    images.update(obs["depth.corner2"].tobytes())
    row = {
        "metaworld": version("metaworld"),
        "mujoco": version("mujoco"),
        "expert_success": success,
        "states": states.hexdigest()[:16],
        "images": images.hexdigest()[:16],
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
