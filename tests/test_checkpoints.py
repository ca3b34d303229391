"""`load_checkpoint` reads a checkpoint on the device it is asked for, whatever device trained it."""

import json
from pathlib import Path

import pytest
import torch

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
from lerobot_flowstep.policies.flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.tools.checkpoints import load_checkpoint
from lerobot_flowstep.tools.training import train_policy_on_dataset

REPO_ID = "local/flowstep_checkpoints_test"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = generate_obstacle_dataset(tmp_path_factory.mktemp("data") / "data", repo_id=REPO_ID, num_episodes=2)
    config = FlowstepTeacherConfig(
        device="cpu", horizon=8, n_action_steps=4, network=NetworkConfig(hidden_dim=16, num_blocks=1)
    )
    _, path, _ = train_policy_on_dataset(config, REPO_ID, root, tmp_path_factory.mktemp("run"), steps=1, batch_size=4)
    return path


def test_a_checkpoint_trained_on_a_gpu_loads_on_the_cpu(checkpoint, tmp_path):
    # What a GPU run writes: the same files, with the preprocessor's device step set to CUDA.
    gpu = tmp_path / "pretrained_model"
    gpu.mkdir()
    for f in checkpoint.iterdir():
        (gpu / f.name).write_bytes(f.read_bytes())
    spec = json.loads((gpu / "policy_preprocessor.json").read_text())
    devices = [s for s in spec["steps"] if s.get("registry_name") == "device_processor"]
    assert devices, "the preprocessor has no device step to set"
    for step in devices:
        step["config"]["device"] = "cuda"
    config = json.loads((gpu / "config.json").read_text())
    (gpu / "policy_preprocessor.json").write_text(json.dumps(spec))
    (gpu / "config.json").write_text(json.dumps(config | {"device": "cuda"}))

    policy, preprocessor, _ = load_checkpoint(gpu, device="cpu")
    batch = {
        "observation.state": torch.zeros(config["input_features"]["observation.state"]["shape"]),
        "observation.environment_state": torch.zeros(
            config["input_features"]["observation.environment_state"]["shape"]
        ),
    }
    processed = preprocessor(batch)
    assert processed["observation.state"].device.type == "cpu"
    assert next(policy.parameters()).device.type == "cpu"
    with torch.inference_mode():
        assert policy.predict_action_chunk(processed).device.type == "cpu"
