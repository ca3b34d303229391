"""LeRobot's `lerobot-train`, as run by each `accelerate launch` worker, minus a teardown deadlock in torch's gloo.

When `lerobot-train` returns under DDP on gloo (the CPU backend), the DDP reducer is freed while the main thread
holds the GIL. It drops the last reference to the gloo process group, whose destructor joins gloo's worker
threads; one of them may be waiting for the GIL to release a tensor it still holds. Neither can proceed, the
worker never exits, and `accelerate launch` waits for it forever (torch issue 56297: pybind-bound destructors
that block). On a 2-core machine the two-process test hung so twice, after the last checkpoint was written.

The workaround: keep a reference to the default process group so the reducer is never its last owner, and once
training has returned (every checkpoint written, `accelerator.end_training()` done), flush and leave the process
without running destructors. Training itself is LeRobot's own, untouched.

    accelerate launch --multi_gpu --num_processes=2 -m lerobot_flowstep.tools.distributed_train <lerobot-train args>
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import torch.distributed as dist

_process_groups: list[Any] = []


def _init_process_group_and_keep(*args: Any, _init: Any = dist.init_process_group, **kwargs: Any) -> None:
    _init(*args, **kwargs)
    _process_groups.append(dist.distributed_c10d._get_default_group())


def main() -> None:
    from lerobot.scripts import lerobot_train

    # Accelerate looks `torch.distributed.init_process_group` up when it creates its state, so the patch is seen.
    dist.init_process_group = _init_process_group_and_keep
    lerobot_train.main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
