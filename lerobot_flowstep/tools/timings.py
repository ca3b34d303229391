"""Benchmark outputs: wall times of stages, kept beside the runs they time so that a resumed benchmark keeps
them, and result files written so that a killed run never leaves one half-written."""

from __future__ import annotations

import json
import uuid
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file beside `path` (a fresh name, so two writers never share one) and replace
    `path` with it in one step."""
    # The temporary name does not repeat `path`'s: a name near the file system's 255-byte limit, which a
    # benchmark's long run names reach, would push it over.
    tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def record_timing(folder: Path, key: str, seconds: float) -> None:
    """Merge `key: seconds` into `folder/timings.json`, replaced atomically so a kill never leaves it half-written.
    One file per run folder: processes timing different folders never overwrite each other's."""
    path = folder / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    write_text_atomic(path, json.dumps(timings | {key: round(seconds, 1)}, indent=2))
