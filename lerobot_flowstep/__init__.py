"""lerobot-flowstep: a CFM teacher distilled into a one-step IMLE student, as a LeRobot policy plugin.

Importing this package registers the policy configs (`flowstep_teacher`, `imle_student`, `flowstep_regression`),
the processor steps (`flowstep_observation_check`, `flowstep_depth_maps`, `flowstep_pointcloud`), the env types
(`flowstep_obstacle`, `flowstep_pusht_disturbed`, `rlbench`, `flowstep_metaworld`), the simulated robots
(`flowstep_obstacle_sim`, `flowstep_metaworld_sim`) and their scripted teleoperators (`flowstep_obstacle_expert`,
`flowstep_metaworld_expert`) with LeRobot.
"""

from lerobot_flowstep import (  # noqa: F401  (for their registrations)
    envs,
    metaworld,
    policies,
    processor,
    rlbench,
    robots,
    teleoperators,
)

__version__ = "0.1.0"
