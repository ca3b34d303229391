"""lerobot-flowstep: a CFM teacher distilled into a one-step IMLE student, as a LeRobot policy plugin.

Importing this package registers the policy configs (`flowstep_teacher`, `imle_student`, `flowstep_regression`),
the point-cloud processor step (`flowstep_pointcloud`) and the env types (`flowstep_obstacle`,
`flowstep_pusht_disturbed`, `rlbench`, `flowstep_metaworld`) with LeRobot.
"""

from lerobot_flowstep import envs, metaworld, policies, processor, rlbench  # noqa: F401  (for their registrations)

__version__ = "0.1.0"
