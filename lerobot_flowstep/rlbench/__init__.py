"""RLBench, read and run without a hard dependency on RLBench: its demo files and conventions, the converter
to LeRobotDataset v3 and its CLI, the `rlbench` env type with a fake backend, and the geometry check.

Importing this package registers the `rlbench` env type and its gym id.
"""

from lerobot_flowstep.rlbench.env import RLBenchEnvConfig  # noqa: F401  (registers the env type)
