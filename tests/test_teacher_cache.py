"""The teacher cache: bound to the dataset it was drawn on, readable errors for files that are not a cache, and a
sharded job that resumes after being killed and can be drawn by two processes at once."""

import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot.policies.factory import make_policy

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
from lerobot_flowstep.policies.flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.imle_student import ImleStudentConfig
from lerobot_flowstep.policies.imle_student.teacher_cache import (
    TeacherCache,
    check_cache_matches_dataset,
    read_cache_metadata,
    shard_dir,
    write_teacher_cache,
)
from lerobot_flowstep.tools.cache_teacher import build_teacher_cache
from lerobot_flowstep.tools.lerobot_commands import offline_env
from lerobot_flowstep.tools.training import train_policy_on_dataset

REPO_ID = "local/flowstep_cache_test"
SETTINGS = {"num_samples": 2, "num_steps": 2, "solver": "euler", "batch_size": 16, "seed": 3}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """Two datasets of the same task, drawn with different seeds: same features, other frames."""
    root = tmp_path_factory.mktemp("data")
    return {
        name: generate_obstacle_dataset(root / name, repo_id=REPO_ID, num_episodes=2, seed=seed)
        for name, seed in (("a", 0), ("b", 1))
    }


@pytest.fixture(scope="module")
def teacher(datasets, tmp_path_factory) -> Path:
    config = FlowstepTeacherConfig(
        device="cpu", horizon=8, n_action_steps=4, network=NetworkConfig(hidden_dim=16, num_blocks=1)
    )
    run = tmp_path_factory.mktemp("teacher")
    return train_policy_on_dataset(config, REPO_ID, datasets["a"], run, steps=1, batch_size=4)[1]


@pytest.fixture(scope="module")
def cache_a(teacher, datasets, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("cache") / "a.safetensors"
    return build_teacher_cache(str(teacher), REPO_ID, datasets["a"], output, **SETTINGS)


def _student(teacher: Path, cache: Path, dataset: Path):
    """The student as `lerobot-train` builds it: `make_policy` with the metadata of the dataset it trains on."""
    config = ImleStudentConfig(device="cpu", teacher_path=str(teacher), teacher_cache_path=str(cache))
    return make_policy(config, ds_meta=LeRobotDatasetMetadata(REPO_ID, root=dataset))


def test_a_cache_drawn_on_another_dataset_is_refused_naming_both(teacher, datasets, cache_a):
    assert _student(teacher, cache_a, datasets["a"]).config.teacher_cache_path == str(cache_a)
    with pytest.raises(ValueError, match="drawn on another dataset") as error:
        _student(teacher, cache_a, datasets["b"])
    message = str(error.value)
    assert str(datasets["a"]) in message and str(datasets["b"]) in message and "actions" in message


def test_a_cache_is_bound_to_frames_not_to_where_the_dataset_lies(teacher, datasets, cache_a, tmp_path):
    """The same frames under another root (a copy, or the same demonstrations converted again) are accepted."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(datasets["a"], copy)
    _student(teacher, cache_a, copy)


def test_an_old_cache_without_identity_loads_with_a_warning_and_a_frame_count_check(
    teacher, datasets, cache_a, tmp_path, caplog
):
    cache = TeacherCache(cache_a)
    old = write_teacher_cache(cache.samples, torch.arange(len(cache.samples)), tmp_path / "old.safetensors", {})
    meta_a = LeRobotDatasetMetadata(REPO_ID, root=datasets["a"])
    with caplog.at_level(logging.WARNING):
        check_cache_matches_dataset(old, meta_a)
    assert "predates dataset identities" in caplog.text
    kept = len(cache.samples) - 3
    shorter = write_teacher_cache(cache.samples[:kept], torch.arange(kept), tmp_path / "s.safetensors", {})
    with pytest.raises(ValueError, match=f"holds {kept} frames"):
        check_cache_matches_dataset(shorter, meta_a)


@pytest.mark.parametrize("kind", ["truncated_header", "truncated_data", "parquet", "weights"])
def test_a_file_that_is_not_a_readable_cache_is_named_with_what_is_wrong(cache_a, datasets, tmp_path, kind):
    data = cache_a.read_bytes()
    path = tmp_path / f"{kind}.safetensors"
    if kind == "truncated_header":
        path.write_bytes(data[:50])
        expected = "truncated"
    elif kind == "truncated_data":
        path.write_bytes(data[: len(data) // 2])
        expected = f"truncated: {len(data) // 2} bytes of the {len(data)}"
    elif kind == "parquet":
        path = next((datasets["a"] / "data").rglob("*.parquet"))
        expected = "Parquet file"
    else:
        from safetensors.torch import save_file

        save_file({"weight": torch.zeros(3)}, str(path))
        expected = "no \\['samples', 'index'\\]"
    with pytest.raises(ValueError, match=expected) as error:
        TeacherCache(path)
    assert str(path) in str(error.value)


def test_a_sharded_job_refuses_other_settings_and_needs_resume_to_continue(teacher, datasets, tmp_path):
    output = tmp_path / "cache.safetensors"
    job = shard_dir(output)
    job.mkdir()
    (job / "job.json").write_text(json.dumps({"num_steps": "5"}))
    args = (str(teacher), REPO_ID, datasets["a"], output)
    with pytest.raises(FileExistsError, match="--resume"):
        build_teacher_cache(*args, **SETTINGS, shard_size=8)
    with pytest.raises(ValueError, match="num_steps: '5' there, '2' now"):
        build_teacher_cache(*args, **SETTINGS, shard_size=8, resume=True)
    assert not output.exists()


def test_one_shard_draws_what_the_unsharded_writer_drew(teacher, datasets, cache_a, tmp_path):
    """Shard 0 draws from `seed` itself: a cache job of one shard is the cache as it was drawn before shards."""
    from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
    from lerobot_flowstep.tools.cache_teacher import memory_frames, sample_teacher
    from lerobot_flowstep.tools.training import load_samples

    policy = FlowstepTeacherPolicy.from_pretrained(teacher)
    meta = LeRobotDatasetMetadata(REPO_ID, root=datasets["a"])
    samples = load_samples(REPO_ID, datasets["a"], policy.config, meta)
    frames = memory_frames(policy, str(teacher), samples, SETTINGS["batch_size"])
    drawn = sample_teacher(policy, frames(range(len(samples["index"]))), 2, 2, "euler", SETTINGS["seed"])
    cache = TeacherCache(cache_a)  # drawn with the default shard size, which covers this small dataset
    assert torch.equal(drawn.index, torch.arange(len(drawn.index))) and torch.equal(cache.samples, drawn.samples)


WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
    from lerobot_flowstep.tools.cache_teacher import build_teacher_cache

    teacher, repo_id, root, output, settings, delay = sys.argv[1:]
    sample_pairs = FlowstepTeacherPolicy.sample_pairs

    def slow(self, *args, **kwargs):  # a large teacher's pace, so that the job can be killed mid-way
        time.sleep(float(delay))
        return sample_pairs(self, *args, **kwargs)

    FlowstepTeacherPolicy.sample_pairs = slow
    build_teacher_cache(teacher, repo_id, Path(root), Path(output), **json.loads(settings))
    """
)


def _worker(tmp_path: Path, teacher: Path, root: Path, output: Path, settings: dict, delay: float) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = offline_env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    args = [str(teacher), REPO_ID, str(root), str(output), json.dumps(settings), str(delay)]
    args = [sys.executable, str(script), *args]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_cache_job_resumes_on_two_processes_to_the_uninterrupted_result(teacher, datasets, tmp_path):
    """SIGKILL after the first shard is written; two processes then finish the job together, and the cache
    equals one drawn in one go (each shard draws from its own seed)."""
    torch.set_num_threads(1)  # as the workers run: the same kernels give the same samples
    settings = SETTINGS | {"shard_size": 32, "resume": True}
    reference_path = tmp_path / "reference.safetensors"
    reference = build_teacher_cache(str(teacher), REPO_ID, datasets["a"], reference_path, **settings)
    output = tmp_path / "resumed.safetensors"
    job = shard_dir(output)
    first = _worker(tmp_path, teacher, datasets["a"], output, settings, delay=0.5)
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine takes a while to import torch and LeRobot
        while not (job / "shard-00000.safetensors").exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "no shard written in 300 s"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done = sorted(p.name for p in job.glob("shard-*.safetensors"))
    num_shards = -(-len(TeacherCache(reference).samples) // 32)
    assert 1 <= len(done) < num_shards and not output.exists()
    workers = [_worker(tmp_path, teacher, datasets["a"], output, settings, delay=0.05) for _ in range(2)]
    try:
        for worker in workers:
            assert worker.wait(timeout=300) == 0, worker.stderr.read()
    finally:
        for worker in workers:
            worker.kill()
    resumed, expected = TeacherCache(output), TeacherCache(reference)
    assert torch.equal(resumed.samples, expected.samples)
    assert torch.equal(resumed.lookup_pairs(torch.arange(10))[1], expected.lookup_pairs(torch.arange(10))[1])
    assert read_cache_metadata(output) == read_cache_metadata(reference)
    assert not job.exists()


def test_a_process_whose_job_another_finished_and_assembled_returns_the_cache(teacher, datasets, tmp_path, monkeypatch):
    """Two processes on one job: when one draws the last shards and assembles the cache (which removes the shard
    folder) while the other still has shards on its list, the other returns the cache instead of failing on the
    vanished folder's lock files (it did, in a CI run of the two-process test above)."""
    import lerobot_flowstep.tools.cache_teacher as cache_teacher

    settings = SETTINGS | {"shard_size": 16, "resume": True}
    args = (str(teacher), REPO_ID, datasets["a"])
    reference = TeacherCache(build_teacher_cache(*args, tmp_path / "reference.safetensors", **settings))
    output = tmp_path / "shared.safetensors"
    original, claims = cache_teacher._claim, []

    def claim_after_the_other_process_finished(path, wait):
        claims.append(path.name)
        if len(claims) == 1:  # this process's first claim: the other process draws the whole job meanwhile
            build_teacher_cache(*args, output, **settings)
            assert output.exists() and not shard_dir(output).exists()
        return original(path, wait)

    monkeypatch.setattr(cache_teacher, "_claim", claim_after_the_other_process_finished)
    assert build_teacher_cache(*args, output, **settings) == output
    assert torch.equal(TeacherCache(output).samples, reference.samples)


def test_an_interrupted_perturbed_cache_job_resumes_to_the_uninterrupted_result(teacher, datasets, tmp_path):
    """A perturbed cache is drawn by shards like any other: interrupted after its first shard and resumed, it
    holds what one uninterrupted job draws, offsets included, and records its noise."""
    import lerobot_flowstep.tools.cache_teacher as cache_teacher

    settings = SETTINGS | {"shard_size": 16, "observation_noise_std": 0.2}
    args = (str(teacher), REPO_ID, datasets["a"])
    reference = TeacherCache(build_teacher_cache(*args, tmp_path / "reference.safetensors", **settings))
    keys = ["observation.environment_state", "observation.state"]
    assert sorted(reference.offsets) == keys and reference.observation_noise_std == 0.2
    assert all(offset.shape[:2] == reference.samples.shape[:2] for offset in reference.offsets.values())
    assert read_cache_metadata(reference.path)["observation_noise_std"] == "0.2"

    output = tmp_path / "resumed.safetensors"
    original, calls = cache_teacher.sample_teacher, []

    def dies_after_one_shard(*a, **kw):
        if calls:
            raise KeyboardInterrupt  # the job is killed while it draws its second shard
        calls.append(1)
        return original(*a, **kw)

    cache_teacher.sample_teacher = dies_after_one_shard
    try:
        with pytest.raises(KeyboardInterrupt):
            build_teacher_cache(*args, output, **settings)
    finally:
        cache_teacher.sample_teacher = original
    assert [p.name for p in shard_dir(output).glob("shard-*.safetensors")] == ["shard-00000.safetensors"]
    with pytest.raises(FileExistsError, match="--resume"):
        build_teacher_cache(*args, output, **settings)
    # Resuming with another noise would mix two jobs' shards: refused, naming the setting.
    with pytest.raises(ValueError, match="observation_noise_std: '0.2' there, '0.3' now"):
        build_teacher_cache(*args, output, **settings | {"observation_noise_std": 0.3, "resume": True})
    resumed = TeacherCache(build_teacher_cache(*args, output, **settings, resume=True))
    assert torch.equal(resumed.samples, reference.samples)
    assert all(torch.equal(resumed.offsets[key], reference.offsets[key]) for key in keys)
    assert torch.equal(resumed.lookup_pairs(torch.arange(10))[1], reference.lookup_pairs(torch.arange(10))[1])
