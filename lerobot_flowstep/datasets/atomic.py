"""Write a LeRobotDataset atomically: nothing appears at the destination until the dataset is complete.

Shared by the dataset generators and converters. The dataset is built in a temporary folder beside the
destination (same filesystem, so the final rename is atomic) and moved into place only when the body of
`atomic_lerobot_dataset` finishes without an exception. A failed or interrupted write (KeyboardInterrupt
included) leaves neither a partial dataset nor the temporary folder; with `overwrite=True` a previous
dataset at the destination survives until the new one replaces it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from lerobot.datasets.lerobot_dataset import LeRobotDataset


def check_destination(root: Path, overwrite: bool) -> None:
    """Raise FileExistsError when `root` exists (a dangling symlink counts) and `overwrite` is False."""
    if (root.exists() or root.is_symlink()) and not overwrite:
        raise FileExistsError(
            f"dataset folder already exists: {root} (pass overwrite=True, or --overwrite on the command line, "
            "to replace it)"
        )


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
def atomic_lerobot_dataset(root: Path, overwrite: bool = False, **create_kwargs: Any) -> Iterator[LeRobotDataset]:
    """`LeRobotDataset.create(root=<staging>, **create_kwargs)`, moved to `root` when the block succeeds.

    The caller adds frames and saves episodes inside the block; finalizing is done here. Raises
    FileExistsError before creating anything if `root` exists and `overwrite` is False.
    """
    root = Path(root)
    if "root" in create_kwargs:
        raise TypeError("atomic_lerobot_dataset chooses the staging root itself; pass the destination as `root`.")
    check_destination(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    built = staging / "dataset"
    dataset: LeRobotDataset | None = None
    try:
        with quiet_datasets_progress_bars():
            dataset = LeRobotDataset.create(root=built, **create_kwargs)
            yield dataset
            dataset.finalize()
        _move_into_place(built, root, staging)
    finally:
        if dataset is not None:
            # Finalising before deleting keeps the writer's __del__ from flushing metadata into the
            # deleted staging folder later, which would recreate it.
            with contextlib.suppress(Exception):
                dataset.finalize()
        shutil.rmtree(staging, ignore_errors=True)
