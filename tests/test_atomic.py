"""Atomic dataset writes: what a killed writer leaves behind is cleaned up, and what overwrite may replace."""

import logging
import os
import socket
import subprocess
import sys

import pytest

from lerobot_flowstep.datasets.atomic import OWNER_FILE, check_destination, remove_stale_staging
from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_staging_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path, caplog):
    root = tmp_path / "data"
    killed = tmp_path / ".data.abc12345.tmp"
    (killed / "dataset" / "meta").mkdir(parents=True)
    (killed / OWNER_FILE).write_text(f"{socket.gethostname()}:{_dead_pid()}")
    running = tmp_path / ".data.def45678.tmp"
    running.mkdir()
    (running / OWNER_FILE).write_text(f"{socket.gethostname()}:{os.getpid()}")  # a writer at work is left alone
    unknown = tmp_path / ".data.old78901.tmp"
    unknown.mkdir()
    remote = tmp_path / ".data.far12345.tmp"  # another host's writer, on a shared filesystem
    remote.mkdir()
    (remote / OWNER_FILE).write_text(f"not-{socket.gethostname()}:{_dead_pid()}")
    with caplog.at_level(logging.WARNING):
        generate_obstacle_dataset(root, num_episodes=1)
    assert not killed.exists()
    assert running.exists() and unknown.exists() and remote.exists()
    assert f"Removed {killed}" in caplog.text and f"{unknown} looks like the staging folder" in caplog.text
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".data.def45678.tmp", ".data.far12345.tmp", ".data.old78901.tmp", "data"]
    assert remove_stale_staging(root) == []


def _kill_during_write(root, signal_name: str) -> subprocess.CompletedProcess:
    code = (
        "import os, signal\n"
        "from lerobot_flowstep.datasets import obstacle_dataset as o\n"
        "original = o.LeRobotDataset.save_episode\n"
        "def save_episode(self, *a, **k):\n"
        "    original(self, *a, **k)\n"
        f"    os.kill(os.getpid(), signal.{signal_name})\n"
        "o.LeRobotDataset.save_episode = save_episode\n"
        f"o.generate_obstacle_dataset({str(root)!r}, num_episodes=2)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_killed_generator_leaves_a_staging_folder_that_the_next_run_removes(tmp_path):
    """The real failure: SIGKILL in the middle of a write."""
    root = tmp_path / "data"
    result = _kill_during_write(root, "SIGKILL")
    assert result.returncode == -9, result.stderr
    leftovers = list(tmp_path.glob(".data.*.tmp"))
    assert len(leftovers) == 1 and not root.exists()
    generate_obstacle_dataset(root, num_episodes=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_sigterm_during_a_write_cleans_up_at_once(tmp_path):
    result = _kill_during_write(tmp_path / "data", "SIGTERM")
    assert result.returncode == 143, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_datasets_and_empty_folders_only(tmp_path):
    (tmp_path / "empty").mkdir()
    check_destination(tmp_path / "empty", overwrite=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a LeRobot dataset"):
        check_destination(tmp_path / "notes", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        check_destination(tmp_path / "file", overwrite=True)
    with pytest.raises(ValueError, match="would replace the input"):
        check_destination(tmp_path, overwrite=True, sources=[tmp_path / "notes" / "todo.txt"])


def test_an_interruption_between_the_two_renames_puts_the_previous_dataset_back(tmp_path, monkeypatch):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from lerobot_flowstep.datasets import atomic

    root = generate_obstacle_dataset(tmp_path / "data", repo_id="local/a", num_episodes=2)

    def interrupted(built, root, staging):
        os.replace(root, staging / "previous")
        raise SystemExit(143)  # SIGTERM right after the old dataset was moved aside

    monkeypatch.setattr(atomic, "_move_into_place", interrupted)
    with pytest.raises(SystemExit):
        generate_obstacle_dataset(root, repo_id="local/a", num_episodes=1, overwrite=True)
    assert LeRobotDataset("local/a", root=root).num_episodes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
