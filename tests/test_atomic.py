"""Atomic dataset writes: what a killed writer leaves behind is cleaned up, and what overwrite may replace."""

import errno
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

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

    def interrupted(built, root, staging, overwrite):
        os.replace(root, staging / "previous")
        raise SystemExit(143)  # SIGTERM right after the old dataset was moved aside

    monkeypatch.setattr(atomic, "_commit", interrupted)
    with pytest.raises(SystemExit):
        generate_obstacle_dataset(root, repo_id="local/a", num_episodes=1, overwrite=True)
    assert LeRobotDataset("local/a", root=root).num_episodes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# A real `lerobot-flowstep generate` process that stops after its first episode until the test lets it go on:
# it has passed the start-up check of its output, and what happens at the output meanwhile is up to the test.
_PAUSED_GENERATE = """
import sys, time
from pathlib import Path
from lerobot_flowstep import cli
from lerobot_flowstep.datasets import obstacle_dataset as o
signals = Path(sys.argv[1])
original = o.LeRobotDataset.save_episode
def save_episode(self, *a, **k):
    original(self, *a, **k)
    if not (signals / "ready").exists():
        (signals / "ready").touch()
        while not (signals / "go").exists():
            time.sleep(0.05)
o.LeRobotDataset.save_episode = save_episode
sys.exit(cli.main(["generate", *sys.argv[2:]]))
"""


def _paused_generate(signals: Path, *args: str) -> subprocess.Popen:
    signals.mkdir()
    return subprocess.Popen(
        [sys.executable, "-c", _PAUSED_GENERATE, str(signals), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(signals: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not (signals / "ready").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the writer never reached its first episode"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_concurrent_generate_runs_to_one_output_leave_one_dataset_and_an_error(tmp_path):
    out = tmp_path / "out" / "data"
    first = _paused_generate(tmp_path / "a", "--output", str(out), "--episodes", "3", "--repo-id", "local/a")
    second = _paused_generate(tmp_path / "b", "--output", str(out), "--episodes", "2", "--repo-id", "local/b")
    _wait_ready(tmp_path / "a", first)
    _wait_ready(tmp_path / "b", second)  # both checked the output before either finished
    (tmp_path / "a" / "go").touch()
    assert first.wait(120) == 0, first.communicate()
    (tmp_path / "b" / "go").touch()
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 2, stderr
    assert f"{out} appeared while this write ran (a LeRobot dataset" in stderr and "discarded" in stderr
    assert LeRobotDataset("local/a", root=out).num_episodes == 3  # the first run's dataset, whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["data"]


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_made_at_the_output_during_a_write_is_kept(tmp_path, overwrite):
    out = tmp_path / "out" / "data"
    writer = _paused_generate(tmp_path / "s", "--output", str(out), "--episodes", "2", *(["--overwrite"] * overwrite))
    _wait_ready(tmp_path / "s", writer)
    out.mkdir()
    (out / "precious.txt").write_text("notes")
    (tmp_path / "s" / "go").touch()
    _, stderr = writer.communicate(timeout=120)
    assert writer.returncode == 2, stderr
    assert f"{out} appeared while this write ran (something that is not a LeRobot dataset" in stderr
    assert (out / "precious.txt").read_text() == "notes" and sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["data"]


def test_overwrite_replaces_a_dataset_that_appeared_during_the_write(tmp_path, monkeypatch):
    from lerobot_flowstep.datasets import obstacle_dataset

    root = tmp_path / "data"
    original = obstacle_dataset.LeRobotDataset.save_episode

    def save_episode(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not root.exists():  # another writer finishes first
            monkeypatch.setattr(obstacle_dataset.LeRobotDataset, "save_episode", original)
            generate_obstacle_dataset(root, repo_id="local/other", num_episodes=1)
            monkeypatch.setattr(obstacle_dataset.LeRobotDataset, "save_episode", save_episode)

    monkeypatch.setattr(obstacle_dataset.LeRobotDataset, "save_episode", save_episode)
    generate_obstacle_dataset(root, repo_id="local/a", num_episodes=2, overwrite=True)
    assert LeRobotDataset("local/a", root=root).num_episodes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_images_says_so_and_keeps_the_old_dataset(tmp_path, monkeypatch, capsys):
    import PIL.Image

    root = generate_obstacle_dataset(tmp_path / "data", repo_id="local/a", num_episodes=1, camera=True, image_size=16)
    monkeypatch.setattr(PIL.Image.Image, "save", _no_space)
    with pytest.raises(OSError, match="disk full") as raised:
        generate_obstacle_dataset(root, repo_id="local/a", num_episodes=2, camera=True, image_size=16, overwrite=True)
    assert raised.value.errno == errno.ENOSPC
    assert "frame-000000.png" in str(raised.value) and str(root) in str(raised.value)
    assert LeRobotDataset("local/a", root=root).num_episodes == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_full_disk_while_writing_tables_says_so_and_names_the_file(tmp_path, monkeypatch):
    import pyarrow.parquet

    monkeypatch.setattr(pyarrow.parquet.ParquetWriter, "write_table", _no_space)
    with pytest.raises(OSError, match="disk full") as raised:
        generate_obstacle_dataset(tmp_path / "data", num_episodes=1)
    assert raised.value.errno == errno.ENOSPC and str(tmp_path / "data") in str(raised.value)
    assert list(tmp_path.iterdir()) == []
