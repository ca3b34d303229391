"""`lerobot-train` and `lerobot-eval` as real subprocesses, offline, finding the plugin by themselves."""

import json
import textwrap
import time

import psutil
import pytest
from safetensors import safe_open

from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
from lerobot_flowstep.tools.lerobot_commands import (
    _run,
    eval_args,
    last_checkpoint,
    lerobot_eval,
    lerobot_train,
    train_args,
)

REPO_ID = "local/flowstep_obstacle_test"
SMALL = ["--policy.horizon=8", "--policy.n_action_steps=4", "--policy.network.hidden_dim=64"]


def _train(tmp_path, name, policy_type, data_root, extra):
    train_dir = tmp_path / name
    lerobot_train(
        [*train_args(policy_type, REPO_ID, data_root, train_dir, steps=4, batch_size=8), *extra],
        tmp_path / f"{name}.log",
        total_steps=4,
    )
    checkpoint = last_checkpoint(train_dir)
    assert {"config.json", "model.safetensors", "policy_preprocessor.json"} <= {p.name for p in checkpoint.iterdir()}
    return checkpoint


def _eval(tmp_path, name, checkpoint, extra=(), episodes=2):
    info = lerobot_eval(
        [*eval_args(checkpoint, "flowstep_obstacle", episodes, 2, seed=123), *extra],
        tmp_path / f"eval_{name}",
        tmp_path / f"eval_{name}.log",
    )
    assert info["overall"]["n_episodes"] == episodes
    return info


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_hung_command_times_out_and_takes_the_processes_it_started_with_it(tmp_path):
    """A stuck `accelerate launch` (a gloo worker hanging in teardown) must fail the caller, not stall it, and
    must not leave its workers running."""
    (tmp_path / "hang.py").write_text(
        textwrap.dedent(
            """
            import subprocess, sys, time
            # As torch's launcher does: the worker runs in a session of its own.
            worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
            print(f"worker {worker.pid}")
            print("step:1 loss:0.5")
            time.sleep(600)
            """
        )
    )
    log = tmp_path / "hang.log"
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"hang did not finish within 3 s") as error:
        _run("hang", [], log, 10, "hang", env={"PYTHONPATH": str(tmp_path)}, timeout_s=3)
    assert time.monotonic() - start < 30
    assert "step:1 loss:0.5" in str(error.value) and str(log) in str(error.value)
    worker = int(next(line.split()[1] for line in log.read_text().splitlines() if line.startswith("worker ")))
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the command's child process outlived the timeout"


def test_a_failing_command_raises_with_its_exit_code_and_log_tail(tmp_path):
    (tmp_path / "fail.py").write_text("print('loading the dataset')\nraise SystemExit(3)\n")
    with pytest.raises(RuntimeError, match=r"fail exited with code 3[\s\S]*loading the dataset"):
        _run("fail", [], tmp_path / "fail.log", None, "fail", env={"PYTHONPATH": str(tmp_path)})


@pytest.fixture(scope="module")
def state_teacher(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("state")
    data = generate_obstacle_dataset(tmp_path / "data", repo_id=REPO_ID, num_episodes=6, seed=0)
    return tmp_path, data, _train(tmp_path, "teacher", "flowstep_teacher", data, SMALL)


@pytest.mark.slow
def test_state_only_teacher_evaluates_through_lerobot(state_teacher):
    tmp_path, _, checkpoint = state_teacher
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["type"] == "flowstep_teacher"
    assert set(config["input_features"]) == {"observation.state", "observation.environment_state"}
    _eval(tmp_path, "teacher", checkpoint)


@pytest.mark.slow
def test_student_distils_from_a_teacher_checkpoint_and_evaluates_through_lerobot(state_teacher):
    tmp_path, data, teacher = state_teacher
    student = _train(
        tmp_path,
        "student",
        "imle_student",
        data,
        [
            f"--policy.teacher_path={teacher}",
            "--policy.num_teacher_samples=3",
            "--policy.num_student_samples=4",
            "--policy.teacher_num_inference_steps=2",
        ],
    )
    config = json.loads((student / "config.json").read_text())
    assert config["type"] == "imle_student" and config["teacher_path"] == str(teacher)
    assert config["horizon"] == 8  # inherited from the teacher
    with safe_open(str(student / "model.safetensors"), framework="pt") as f:
        assert all(k.startswith(("encoder.", "generator.", "initialized_from_teacher")) for k in f.keys())  # noqa: SIM118
    _eval(tmp_path, "student", student)


@pytest.mark.slow
def test_camera_teacher_with_point_clouds_trains_and_evaluates_through_lerobot(tmp_path):
    data = generate_obstacle_dataset(
        tmp_path / "data", repo_id=REPO_ID, num_episodes=3, camera=True, image_size=32, seed=0
    )
    checkpoint = _train(
        tmp_path,
        "teacher",
        "flowstep_teacher",
        data,
        [
            *SMALL,
            "--policy.encoder.vision_backbone=conv",
            "--policy.pointcloud.cameras=[top]",
            "--policy.pointcloud.num_points=64",
            "--policy.pointcloud.bounds_low=[-1.2,-1.2,-0.05]",
            "--policy.pointcloud.bounds_high=[1.2,1.2,0.5]",
        ],
    )
    pre = json.loads((checkpoint / "policy_preprocessor.json").read_text())
    step = next(s for s in pre["steps"] if s.get("registry_name") == "flowstep_pointcloud")
    assert step["config"]["cameras"] == ["top"]
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["input_features"]["observation.pointcloud"]["shape"] == [64, 3]
    assert "observation.images.top" in config["input_features"]
    # The dataset's depth map reaches the policy as metric depth, with the camera's calibration from its info.
    assert "observation.depth.top" in config["input_features"]
    assert "observation.images.top_depth" not in config["input_features"]
    assert "top" in config["pointcloud"]["fixed_cameras"]
    _eval(tmp_path, "camera", checkpoint, ["--env.camera=true", "--env.image_size=32"])


@pytest.mark.slow
def test_two_cpu_processes_train_teacher_and_cached_student_and_write_one_loadable_checkpoint(tmp_path):
    """Data-parallel training on LeRobot's engine (accelerate + gloo), as LeRobot supports for its own policies."""
    from lerobot_flowstep.policies.imle_student.modeling_imle_student import ImleStudentPolicy
    from lerobot_flowstep.tools.cache_teacher import build_teacher_cache
    from lerobot_flowstep.tools.lerobot_commands import lerobot_train_distributed

    data = generate_obstacle_dataset(tmp_path / "data", repo_id=REPO_ID, num_episodes=4, seed=0)
    checkpoints = {}
    for name, policy_type, extra in (
        ("teacher", "flowstep_teacher", SMALL),
        ("student", "imle_student", None),
    ):
        if extra is None:
            cache = tmp_path / "cache.safetensors"
            build_teacher_cache(checkpoints["teacher"], REPO_ID, data, cache, num_samples=4, num_steps=2)
            extra = [
                f"--policy.teacher_path={checkpoints['teacher']}",
                f"--policy.teacher_cache_path={cache}",
                "--policy.num_teacher_samples=4",
                "--policy.num_student_samples=4",
            ]
        train_dir = tmp_path / name
        log = tmp_path / f"{name}.log"
        # Normally about 20 s; the bound turns a rare gloo teardown hang into a failure with the log's tail.
        lerobot_train_distributed(
            [*train_args(policy_type, REPO_ID, data, train_dir, steps=3, batch_size=4), *extra],
            2,
            log,
            total_steps=3,
            timeout_s=600,
        )
        text = log.read_text()
        assert "Effective batch size: 4 x 2 = 8" in text
        assert sorted(p.name for p in (train_dir / "checkpoints").iterdir()) == ["000003", "last"]
        checkpoints[name] = last_checkpoint(train_dir)
    student = ImleStudentPolicy.from_pretrained(checkpoints["student"], strict=True)
    assert bool(student.initialized_from_teacher)
