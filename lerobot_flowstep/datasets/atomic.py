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
import errno
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
# A write that fails with less free space than this is reported as a full disk, whatever error it raised.
_FULL_BELOW_BYTES = 1 << 20


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


def _replaceable(path: Path) -> bool:
    """What `overwrite` may replace (`check_destination`): a LeRobot dataset folder, an empty folder, or a link
    to a folder (the link is replaced, not what it points to); never a file or another folder."""
    return path.is_dir() and (path.is_symlink() or is_lerobot_dataset(path) or not any(path.iterdir()))


def _appeared(root: Path, overwrite: bool) -> FileExistsError:
    what = "a LeRobot dataset" if is_lerobot_dataset(root) else "something that is not a LeRobot dataset"
    allowed = " (--overwrite replaces only a dataset)" if overwrite else " (pass --overwrite to replace a dataset)"
    return FileExistsError(
        f"{root} appeared while this write ran ({what}: another writer, or someone else?). It was left as it is "
        f"and this run's dataset was discarded{allowed}; write again, or choose another output."
    )


def _commit(built: Path, root: Path, staging: Path, overwrite: bool) -> None:
    """Move the finished dataset to `root`, checking `root` again now: the check at the start is minutes old.

    A rename onto a non-empty folder fails (ENOTEMPTY), so two writers committing at once cannot replace each
    other; only an empty folder created in the instant between the check and the rename is replaced."""
    if root.exists() or root.is_symlink():
        if not overwrite or not _replaceable(root):
            raise _appeared(root, overwrite)
        previous = staging / "previous"
        os.rename(root, previous)
        try:
            os.rename(built, root)
        except BaseException:
            os.rename(previous, root)
            raise
        return
    try:
        os.rename(built, root)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise _appeared(root, overwrite) from err
        raise


def _restore_previous(previous: Path, root: Path) -> None:
    """Put back the dataset a failed commit moved aside; if `root` is taken meanwhile, keep it beside `root`."""
    try:
        os.rename(previous, root)
        return
    except OSError:
        rescue = root.with_name(f"{root.name}.previous-{os.getpid()}")
        os.rename(previous, rescue)
        logger.error("%s was taken while its previous dataset was moved aside; that dataset is now %s.", root, rescue)


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


class _NoSpaceRecorder(logging.Filter):
    """Notes the first image LeRobot's image writer failed to write for lack of space, and keeps the same
    message from repeating for every later frame: the writer logs such errors instead of raising them."""

    def __init__(self) -> None:
        super().__init__()
        self.path: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        error = next((a for a in args if isinstance(a, OSError) and a.errno == errno.ENOSPC), None)
        if error is None:
            return True
        first = self.path is None
        if first:
            self.path = str(args[0]) if args else str(error.filename)
        return first


def _no_space_error(error: BaseException) -> OSError | None:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error
        error = error.__cause__ or error.__context__
    return None


def _space_left(folder: Path) -> int | None:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


@contextlib.contextmanager
def _disk_full_errors(root: Path, staging: Path) -> Iterator[None]:
    """Report a full disk as one error saying so and naming the file, instead of the later error it causes (an
    image that was never written is "not found" when the episode is saved)."""
    recorder = _NoSpaceRecorder()
    image_logger = logging.getLogger("lerobot.datasets.image_writer")
    image_logger.addFilter(recorder)
    try:
        yield
    except Exception as err:
        no_space = _no_space_error(err)
        path = recorder.path or (no_space.filename if no_space is not None else None)
        space = _space_left(staging)
        if no_space is None and recorder.path is None and (space is None or space > _FULL_BELOW_BYTES):
            raise
        where = f"writing {path}" if path else f"writing into {staging}"
        raise OSError(
            errno.ENOSPC,
            f"disk full: no space left while {where} (the dataset for {root}). Nothing changed at {root}: an "
            "existing dataset there is kept as it was. Free some space and write again.",
        ) from err
    finally:
        image_logger.removeFilter(recorder)


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
    committed = False
    try:
        with quiet_datasets_progress_bars(), _disk_full_errors(root, staging):
            dataset = LeRobotDataset.create(root=built, **{"video_backend": video_backend(), **create_kwargs})
            yield dataset
            dataset.finalize()
        _commit(built, root, staging, overwrite)
        committed = True
    finally:
        if dataset is not None:
            # Finalising before deleting keeps the writer's __del__ from flushing metadata into the
            # deleted staging folder later, which would recreate it.
            with contextlib.suppress(Exception):
                dataset.finalize()
        previous = staging / "previous"
        if previous.exists() and not committed:
            # Interrupted between moving the old dataset aside and moving the new one in: put the old one back.
            _restore_previous(previous, root)
        shutil.rmtree(staging, ignore_errors=True)
        if main_thread:
            signal.signal(signal.SIGTERM, previous_handler if previous_handler is not None else signal.SIG_DFL)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
