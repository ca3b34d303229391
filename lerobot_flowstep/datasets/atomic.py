"""Write a LeRobotDataset atomically: nothing appears at the destination until the dataset is complete.

Shared by the dataset generators and converters. The dataset is built in a temporary folder beside the
destination (same filesystem, so the final rename is atomic) and moved into place only when the body of
`atomic_lerobot_dataset` finishes without an exception. A failed or interrupted write (KeyboardInterrupt
included) leaves neither a partial dataset nor the temporary folder; with `overwrite=True` a previous
dataset at the destination survives until the new one replaces it. SIGTERM unwinds through the clean-up
too. A process killed outright (SIGKILL) cannot clean up: its staging folder records the writer's process
id, and the next write to the same destination removes it once that process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from lerobot_flowstep.datasets.video import video_backend

logger = logging.getLogger(__name__)
OWNER_FILE = "writer.pid"


def is_lerobot_dataset(root: Path) -> bool:
    return (Path(root) / "meta" / "info.json").is_file()


def check_destination(root: Path, overwrite: bool, sources: Sequence[Path | str] = ()) -> None:
    """Refuse, before anything is written, a destination whose replacement would lose data.

    - `root` is one of `sources` (the converter's input) or a folder holding one: replacing it would delete
      the input (ValueError, with or without `overwrite`);
    - `root` exists (a dangling symlink counts) and `overwrite` is False (FileExistsError);
    - `root` exists and `overwrite` is True, but it is neither a LeRobot dataset (`meta/info.json`) nor an
      empty folder: `overwrite` replaces datasets, never other folders (FileExistsError).
    """
    root = Path(root)
    resolved = root.resolve()
    for source in sources:
        source_path = Path(source).resolve()
        if resolved == source_path or resolved in source_path.parents:
            raise ValueError(f"output {root} would replace the input {source}; choose another output folder")
    if not (root.exists() or root.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(
            f"dataset folder already exists: {root} (pass overwrite=True, or --overwrite on the command line, "
            "to replace it)"
        )
    if root.is_dir() and not root.is_symlink() and not is_lerobot_dataset(root) and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not a LeRobot dataset (no meta/info.json) and not empty: overwrite only replaces a "
            "dataset. Remove the folder yourself or choose another output."
        )
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder; overwrite only replaces a dataset folder.")


def remove_stale_staging(root: Path) -> list[Path]:
    """Remove the staging folders that killed writes to `root` left beside it; returns what was removed.

    A staging folder whose writer is still running (another conversion to the same destination), or was
    started on another host, is kept; one without an owner file (written before owner files existed) is
    only reported."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(Path(root).name)}\.[a-z0-9_]{{8}}\.tmp$")
    for staging in sorted(Path(root).parent.glob(f".{Path(root).name}.*.tmp")):
        if not pattern.match(staging.name):
            continue
        owner = staging / OWNER_FILE
        try:
            host, _, pid_text = owner.read_text().strip().rpartition(":")
            pid = int(pid_text)
        except (OSError, ValueError):
            logger.warning("%s looks like the staging folder of an interrupted write to %s; delete it", staging, root)
            continue
        if host != socket.gethostname() or _process_alive(pid):
            # A writer on another machine (a shared filesystem) cannot be checked from here, so it is left alone.
            continue
        shutil.rmtree(staging, ignore_errors=True)
        logger.warning("Removed %s, left by an interrupted write to %s (process %d is gone).", staging, root, pid)
        removed.append(staging)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _move_into_place(built: Path, root: Path, staging: Path) -> None:
    if root.exists() or root.is_symlink():
        previous = staging / "previous"
        os.replace(root, previous)
        try:
            os.replace(built, root)
        except BaseException:
            os.replace(previous, root)
            raise
    else:
        os.replace(built, root)


@contextlib.contextmanager
def quiet_datasets_progress_bars() -> Iterator[None]:
    """Silence Hugging Face `datasets` progress bars for the block.

    LeRobot embeds each saved episode through a `datasets` map whose own progress bar would bury the
    caller's per-episode bar.
    """
    were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not were_disabled:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def atomic_lerobot_dataset(
    root: Path, overwrite: bool = False, sources: Sequence[Path | str] = (), **create_kwargs: Any
) -> Iterator[LeRobotDataset]:
    """`LeRobotDataset.create(root=<staging>, **create_kwargs)`, moved to `root` when the block succeeds.

    The caller adds frames and saves episodes inside the block; finalizing is done here. Runs
    `check_destination(root, overwrite, sources)` before creating anything, and removes the staging folders
    of earlier killed writes to `root`.
    """
    root = Path(root)
    if "root" in create_kwargs:
        raise TypeError("atomic_lerobot_dataset chooses the staging root itself; pass the destination as `root`.")
    check_destination(root, overwrite, sources)
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    (staging / OWNER_FILE).write_text(f"{socket.gethostname()}:{os.getpid()}")
    built = staging / "dataset"
    dataset: LeRobotDataset | None = None
    # SIGTERM (a job scheduler, `kill`) would end the process without running the clean-up below; raising
    # SystemExit instead unwinds through it. Only the main thread may set handlers.
    main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    try:
        with quiet_datasets_progress_bars():
            dataset = LeRobotDataset.create(root=built, **{"video_backend": video_backend(), **create_kwargs})
            yield dataset
            dataset.finalize()
        _move_into_place(built, root, staging)
    finally:
        if dataset is not None:
            # Finalising before deleting keeps the writer's __del__ from flushing metadata into the
            # deleted staging folder later, which would recreate it.
            with contextlib.suppress(Exception):
                dataset.finalize()
        previous = staging / "previous"
        if previous.exists() and not (root.exists() or root.is_symlink()):
            # Interrupted between moving the old dataset aside and moving the new one in: put the old one back.
            os.replace(previous, root)
        shutil.rmtree(staging, ignore_errors=True)
        if main_thread:
            signal.signal(signal.SIGTERM, previous_handler if previous_handler is not None else signal.SIG_DFL)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
