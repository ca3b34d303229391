"""MetaWorld with RGB-D cameras: its tasks and experts, the `flowstep_metaworld` env type and the demo generator.

Importing this package registers the env type and the gym id `flowstep/MetaWorld-v0`; MetaWorld and MuJoCo
(the `metaworld` extra) are imported only when an env is built. It also sets `MUJOCO_GL=egl` unless the user
chose a backend: MuJoCo reads the variable once, when it is first imported, which may be before any env of
ours is built (LeRobot, gymnasium or a test may import it first), and without it MuJoCo tries a display.
"""

from lerobot_flowstep.metaworld.config import MetaworldEnvConfig  # noqa: F401  (registers the env type)
from lerobot_flowstep.metaworld.rendering import default_gl_backend

default_gl_backend()
