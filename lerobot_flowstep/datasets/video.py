"""The decoder a LeRobotDataset reads its videos with, for this package's own commands.

LeRobot picks torchcodec when it loads and pyav otherwise, but without a system FFmpeg every pick tries torchcodec
again and logs its whole failure: one traceback per FFmpeg major version torchcodec probes (`libavutil.so.56` to
`.60`), ~60 lines, at every `LeRobotDataset` created. Here the same choice is made once per process, quietly;
README ("A quiet console") says how to make torchcodec load instead. Depth maps are decoded with pyav by LeRobot
whatever the backend (`decode_video_frames`).
"""

from __future__ import annotations

import functools
import importlib
import logging

logger = logging.getLogger(__name__)


@functools.cache
def video_backend() -> str:
    """ "torchcodec" when it loads (it needs FFmpeg's shared libraries), else "pyav": LeRobot's choice."""
    try:
        importlib.import_module("torchcodec")
    except (ImportError, OSError, RuntimeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        logger.info("Decoding videos with pyav: torchcodec does not load (%s).", first_line)
        return "pyav"
    return "torchcodec"
