"""Config errors that reach `lerobot-train` users.

draccus, the parser of LeRobot's commands, turns a TypeError or ValueError raised while it builds a config into
"Couldn't instantiate class ... using the given arguments" and drops the message, so a refused value was
explained only to Python callers. `command_line_errors` re-raises such an error as a `ConfigError`, which
draccus passes on with its message, but only while draccus is building the config: called from Python, the
TypeError or ValueError is unchanged.
"""

from __future__ import annotations

import functools
import sys


class ConfigError(Exception):
    """A config value refused while LeRobot's command-line parser (draccus) built the config."""


def _built_by_draccus() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("draccus."):
            return True
        frame = frame.f_back
    return False


def command_line_errors[T: type](cls: T) -> T:
    """Class decorator for a config dataclass: see the module docstring. Apply it outside `@dataclass`."""
    post_init = cls.__dict__.get("__post_init__")
    if post_init is None:
        return cls

    @functools.wraps(post_init)
    def checked(self, *args, **kwargs):
        try:
            return post_init(self, *args, **kwargs)
        except (TypeError, ValueError) as err:
            if not _built_by_draccus():
                raise
            raise ConfigError(f"{type(self).__name__}: {err}") from err

    cls.__post_init__ = checked
    return cls
