"""A checkpoint is read on the device it is asked for, whatever device trained it: by `load_checkpoint` and by
the teacher cache."""

import json
from pathlib import Path

import pytest
import torch

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
from lerobot_flowstep.policies.flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.imle_student.teacher_cache import TeacherCache
from lerobot_flowstep.tools.cache_teacher import build_teacher_cache
from lerobot_flowstep.tools.checkpoints import load_checkpoint
from lerobot_flowstep.tools.training import train_policy_on_dataset

REPO_ID = "local/flowstep_checkpoints_test"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_obstacle_dataset(tmp_path_factory.mktemp("data") / "data", repo_id=REPO_ID, num_episodes=2)


@pytest.fixture(scope="module")
def gpu_checkpoint(dataset, tmp_path_factory) -> Path:
    """What a GPU run writes: a trained teacher whose config and preprocessor device step say CUDA."""
    config = FlowstepTeacherConfig(
        device="cpu", horizon=8, n_action_steps=4, network=NetworkConfig(hidden_dim=16, num_blocks=1)
    )
    run = tmp_path_factory.mktemp("run")
    _, path, _ = train_policy_on_dataset(config, REPO_ID, dataset, run, steps=1, batch_size=4)
    spec = json.loads((path / "policy_preprocessor.json").read_text())
    devices = [s for s in spec["steps"] if s.get("registry_name") == "device_processor"]
    assert devices, "the preprocessor has no device step to set"
    for step in devices:
        step["config"]["device"] = "cuda"
    (path / "policy_preprocessor.json").write_text(json.dumps(spec))
    saved = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(saved | {"device": "cuda"}))
    return path


def test_a_checkpoint_trained_on_a_gpu_loads_on_the_cpu(gpu_checkpoint):
    policy, preprocessor, _ = load_checkpoint(gpu_checkpoint, device="cpu")
    features = json.loads((gpu_checkpoint / "config.json").read_text())["input_features"]
    batch = {key: torch.zeros(features[key]["shape"]) for key in features}
    processed = preprocessor(batch)
    assert processed["observation.state"].device.type == "cpu"
    assert next(policy.parameters()).device.type == "cpu"
    with torch.inference_mode():
        assert policy.predict_action_chunk(processed).device.type == "cpu"


def test_a_teacher_trained_on_a_gpu_is_cached_on_the_cpu(gpu_checkpoint, dataset, tmp_path):
    output = build_teacher_cache(
        str(gpu_checkpoint), REPO_ID, dataset, tmp_path / "cache.safetensors", num_samples=2, num_steps=1, device="cpu"
    )
    cache = TeacherCache(output)
    assert cache.num_samples == 2 and torch.isfinite(cache.samples).all()
