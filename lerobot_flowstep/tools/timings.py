"""Wall times of benchmark stages, kept beside the runs they time so that a resumed benchmark keeps them."""

from __future__ import annotations

import json
from pathlib import Path


def record_timing(folder: Path, key: str, seconds: float) -> None:
    """Merge `key: seconds` into `folder/timings.json`, replaced atomically so a kill never leaves it half-written.
    One file per run folder: processes timing different folders never overwrite each other's."""
    path = folder / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(timings | {key: round(seconds, 1)}, indent=2))
    tmp.replace(path)
