"""Run LeRobot's own `lerobot-train` / `lerobot-eval` as subprocesses, offline, with a progress bar.

The demo and the benchmarks go through the very commands a user types, so what they measure is what a
user gets. Output goes to a log file; a failing command raises with the log's tail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import psutil
from tqdm import tqdm

_STEP = re.compile(r"step:(\d+(?:\.\d+)?)([KMB]?)\b")
_SUFFIX = {"": 1, "K": 1_000, "M": 1_000_000, "B": 1_000_000_000}


def offline_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for LeRobot subprocesses: no Hub access, no W&B, no accidental GPU grab on CI.
    `extra` is set on top (e.g. `HF_HUB_CACHE` to load a policy by repo id from a given Hub cache)."""
    env = {**os.environ, **(extra or {})}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _run(
    module: str,
    args: list[str],
    log_path: Path,
    total_steps: int | None,
    desc: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> None:
    """Run `python -m module args`, its output to `log_path` line by line (so the log shows where a stuck run
    is), raising with the log's tail on failure.

    On a timeout, an error or Ctrl-C here, the command is killed with every process it started (the workers
    `accelerate launch` starts would otherwise outlive it and hold the log's pipe open)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", module, *args]
    tail: deque[str] = deque(maxlen=40)
    with (
        open(log_path, "w", buffering=1) as log,
        tqdm(total=total_steps, desc=desc, unit="step", disable=total_steps is None) as bar,
    ):
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=offline_env(env),
            bufsize=1,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                match = _STEP.search(line)
                if match and total_steps is not None:
                    step = int(float(match.group(1)) * _SUFFIX[match.group(2)])
                    bar.update(max(0, min(step, total_steps) - bar.n))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            reader.join(timeout=10)
            raise TimeoutError(
                f"{module} did not finish within {timeout_s:g} s and was stopped, with the processes it started; "
                f"full log in {log_path}. Last lines:\n" + "".join(tail)
            ) from None
        except BaseException:
            _kill_tree(proc)
            raise
        reader.join()
        if code == 0 and total_steps is not None:
            bar.update(total_steps - bar.n)
    if code != 0:
        raise RuntimeError(f"{module} exited with code {code}; full log in {log_path}. Last lines:\n" + "".join(tail))


def _kill_tree(proc: subprocess.Popen) -> None:
    # Not only the process group: torch's launcher starts each worker in a session of its own.
    try:
        processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(processes, timeout=10)


def lerobot_train(
    args: list[str],
    log_path: Path,
    total_steps: int | None = None,
    desc: str = "train",
    timeout_s: float | None = None,
) -> None:
    _run("lerobot.scripts.lerobot_train", args, log_path, total_steps, desc, timeout_s=timeout_s)


def lerobot_train_distributed(
    args: list[str],
    num_processes: int,
    log_path: Path,
    total_steps: int | None = None,
    desc: str = "train",
    timeout_s: float | None = None,
) -> None:
    """`lerobot-train` in `num_processes` data-parallel processes through `accelerate launch`.

    `--multi_gpu` makes accelerate start the processes with torch's launcher; with `--policy.device=cpu`
    LeRobot's Accelerator then runs them on the CPU over gloo. (`accelerate launch --cpu` starts several
    CPU processes only through MPI, and otherwise runs one.)"""
    launch = [
        "--multi_gpu",
        f"--num_processes={num_processes}",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "-m",
        "lerobot_flowstep.tools.distributed_train",
    ]
    _run("accelerate.commands.launch", [*launch, *args], log_path, total_steps, desc, timeout_s=timeout_s)


def lerobot_eval(
    args: list[str],
    output_dir: Path,
    log_path: Path,
    desc: str = "eval",
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> dict:
    """Run `lerobot-eval` and return its `eval_info.json`; `env` adds to the subprocess's environment."""
    _run("lerobot.scripts.lerobot_eval", [*args, f"--output_dir={output_dir}"], log_path, None, desc, env, timeout_s)
    with open(output_dir / "eval_info.json") as f:
        return json.load(f)


def last_checkpoint(train_output_dir: Path) -> Path:
    """The `pretrained_model` folder of the last checkpoint `lerobot-train` wrote."""
    path = train_output_dir / "checkpoints" / "last" / "pretrained_model"
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint at {path}; did lerobot-train finish?")
    return path


def train_args(
    policy_type: str, repo_id: str, data_root: Path, output_dir: Path, steps: int, batch_size: int, seed: int = 0
) -> list[str]:
    """`lerobot-train` arguments for a CPU run on a local dataset with no Hub, no W&B, no in-training eval."""
    return [
        f"--policy.type={policy_type}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        f"--dataset.repo_id={repo_id}",
        f"--dataset.root={data_root}",
        f"--output_dir={output_dir}",
        f"--steps={steps}",
        f"--batch_size={batch_size}",
        f"--save_freq={steps}",
        f"--log_freq={max(1, min(100, steps // 10))}",
        "--env_eval_freq=0",
        "--num_workers=0",
        "--wandb.enable=false",
        f"--seed={seed}",
    ]


def eval_args(
    checkpoint: Path, env_type: str, episodes: int, batch_size: int, seed: int, device: str = "cpu"
) -> list[str]:
    """`lerobot-eval` arguments for a local checkpoint; add `--env.<field>=` arguments as needed."""
    return [
        f"--policy.path={checkpoint}",
        f"--policy.device={device}",
        f"--env.type={env_type}",
        f"--eval.n_episodes={episodes}",
        f"--eval.batch_size={min(batch_size, episodes)}",
        # Async envs start one process per env, each importing torch and LeRobot: minutes on 2 cores for
        # environments that step in microseconds.
        "--eval.use_async_envs=false",
        f"--seed={seed}",
    ]


def lerobot_record(args: list[str], log_path: Path, timeout_s: float | None = None) -> None:
    """Run `lerobot-record` (a robot and a teleoperator; add `--dataset.push_to_hub=false` to stay offline)."""
    _run("lerobot.scripts.lerobot_record", args, log_path, None, "record", timeout_s=timeout_s)


def lerobot_rollout(args: list[str], log_path: Path, timeout_s: float | None = None) -> None:
    """Run `lerobot-rollout` (a policy on a robot)."""
    _run("lerobot.scripts.lerobot_rollout", args, log_path, None, "rollout", timeout_s=timeout_s)


def sim_robot_args(
    robot_type: str,
    fps: int,
    episode_time_s: float,
    reset_time_s: float,
    calibration_dir: Path,
    report_path: Path | None = None,
) -> list[str]:
    """`--robot.*` arguments of a simulated robot (`flowstep_obstacle_sim`, `flowstep_metaworld_sim`) on a scene
    schedule (see `SimRobotConfig`)."""
    args = [
        f"--robot.type={robot_type}",
        f"--robot.fps={fps}",
        f"--robot.episode_time_s={episode_time_s}",
        f"--robot.reset_time_s={reset_time_s}",
        f"--robot.calibration_dir={calibration_dir}",
    ]
    return args + ([f"--robot.report_path={report_path}"] if report_path is not None else [])


def record_dataset_args(
    repo_id: str,
    root: Path,
    fps: int,
    episode_time_s: float,
    reset_time_s: float,
    num_episodes: int,
    task: str,
) -> list[str]:
    """`lerobot-record`'s `--dataset.*` arguments for a local dataset on a simulated robot's schedule (the same
    episode and reset times as the robot's), with nothing pushed, shown or played."""
    return [
        f"--dataset.repo_id={repo_id}",
        f"--dataset.root={root}",
        f"--dataset.fps={fps}",
        f"--dataset.episode_time_s={episode_time_s}",
        f"--dataset.reset_time_s={reset_time_s}",
        f"--dataset.num_episodes={num_episodes}",
        f"--dataset.single_task={task}",
        "--dataset.push_to_hub=false",
        "--dataset.no_stamp=true",
        "--display_data=false",
        "--play_sounds=false",
    ]


def obstacle_sim_args(
    fps: int, episode_time_s: float, reset_time_s: float, calibration_dir: Path, report_path: Path | None = None
) -> list[str]:
    """`sim_robot_args` of the embedded task's robot `flowstep_obstacle_sim`."""
    return sim_robot_args("flowstep_obstacle_sim", fps, episode_time_s, reset_time_s, calibration_dir, report_path)
