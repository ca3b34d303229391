"""The in-memory trainer draws the frames `lerobot-train` draws: same sampler, same frames, same order."""

from pathlib import Path

import pytest
import torch
from lerobot.configs.default import DatasetConfig
from lerobot.configs.train import TrainPipelineConfig
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.datasets.obstacle_dataset import generate_obstacle_dataset
from lerobot_flowstep.policies.flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.tools.training import episode_aware_batches, load_samples, train_policy_on_dataset

REPO_ID = "local/flowstep_training_test"


def _config(**overrides) -> FlowstepTeacherConfig:
    small = {"horizon": 8, "n_action_steps": 4, "network": NetworkConfig(hidden_dim=32, num_blocks=1)}
    return FlowstepTeacherConfig(device="cpu", **(small | overrides))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_obstacle_dataset(tmp_path_factory.mktemp("data") / "data", repo_id=REPO_ID, num_episodes=4)


def _record_batches(monkeypatch) -> list[list[int]]:
    """The frame indices of every batch the teacher's training step receives, from now on."""
    seen: list[list[int]] = []
    forward = FlowstepTeacherPolicy.forward

    def recording_forward(self, batch):
        seen.append(batch["index"].tolist())
        return forward(self, batch)

    monkeypatch.setattr(FlowstepTeacherPolicy, "forward", recording_forward)
    return seen


def _lerobot_train_indices(root: Path, output: Path, steps: int, batch_size: int, episodes, monkeypatch) -> list:
    """The frame indices of every batch that LeRobot's own training loop hands to the policy."""
    from lerobot.scripts.lerobot_train import train

    seen = _record_batches(monkeypatch)
    cfg = TrainPipelineConfig(
        dataset=DatasetConfig(repo_id=REPO_ID, root=str(root), episodes=episodes),
        policy=_config(),
        output_dir=output,
        steps=steps,
        batch_size=batch_size,
        num_workers=0,
        seed=3,
        save_checkpoint=False,
        env_eval_freq=0,
        log_freq=1000,
    )
    train(cfg)
    return seen


@pytest.mark.parametrize("episodes", [None, [0, 2, 3]])
def test_in_memory_batches_are_lerobot_trains_batches(dataset, tmp_path, monkeypatch, episodes):
    meta = LeRobotDatasetMetadata(REPO_ID, root=dataset)
    config = _config()
    frames = sum(meta.episodes["length"][e] - config.drop_n_last_frames for e in episodes or range(4))
    batch_size = 32
    # Past one epoch (a short last batch included), so the per-epoch reshuffle is compared too.
    steps = -(-frames // batch_size) + 2
    expected = _lerobot_train_indices(dataset, tmp_path / "run", steps, batch_size, episodes, monkeypatch)
    batches = episode_aware_batches(meta, config, batch_size, seed=3, episodes=episodes)
    drawn = [next(batches).tolist() for _ in range(steps)]
    assert drawn == expected


def test_an_epoch_draws_every_frame_that_starts_a_full_chunk_once(dataset):
    """Independent of LeRobot's sampler: from the episode boundaries, the frames that leave `drop_n_last_frames`
    frames after them in their episode. The old trainer drew uniformly from all frames, with repeats."""
    meta = LeRobotDatasetMetadata(REPO_ID, root=dataset)
    config = _config(horizon=12, n_action_steps=4)  # drop_n_last_frames = 12 - 4 - 2 + 1 = 7
    assert config.drop_n_last_frames == 7
    allowed = []
    for start, end in zip(meta.episodes["dataset_from_index"], meta.episodes["dataset_to_index"], strict=True):
        allowed += range(start, end - 7)
    batches = episode_aware_batches(meta, config, batch_size=len(allowed), seed=0)
    epoch = next(batches).tolist()
    assert sorted(epoch) == allowed
    assert next(batches).tolist() != epoch  # the next epoch is reshuffled


def test_training_on_chosen_episodes_never_sees_the_others(dataset, tmp_path, monkeypatch):
    meta = LeRobotDatasetMetadata(REPO_ID, root=dataset)
    config = _config()
    samples = load_samples(REPO_ID, dataset, config, meta)
    held_out = set(range(meta.episodes["dataset_from_index"][1], meta.episodes["dataset_to_index"][1]))
    batches = _record_batches(monkeypatch)
    saved_steps = []
    train_policy_on_dataset(
        config, REPO_ID, dataset, tmp_path, steps=6, batch_size=64, samples=samples, episodes=[0, 2, 3],
        on_step=lambda step, *_: saved_steps.append(step),
    )  # fmt: skip
    seen = {i for batch in batches for i in batch}
    assert seen and not seen & held_out
    assert saved_steps == list(range(1, 7))


def test_samples_out_of_index_order_are_refused(dataset):
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from lerobot_flowstep.tools.training import train_in_memory

    meta = LeRobotDatasetMetadata(REPO_ID, root=dataset)
    config = _config()
    samples = load_samples(REPO_ID, dataset, config, meta)
    shuffled = {k: v.flip(0) for k, v in samples.items()}
    policy = make_policy(config, ds_meta=meta)
    preprocessor, _ = make_pre_post_processors(config, dataset_stats=meta.stats)
    batches = episode_aware_batches(meta, config, 8)
    with pytest.raises(ValueError, match="index order"):
        train_in_memory(policy, shuffled, preprocessor, 1, batches)
    assert torch.equal(samples["index"], torch.arange(meta.total_frames))


TRAINER = """
import sys, time
from pathlib import Path
from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.policies.flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.tools.training import train_policy_on_dataset

root, output, steps, delay = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
config = FlowstepTeacherConfig(
    device="cpu", horizon=8, n_action_steps=4, network=NetworkConfig(hidden_dim=32, num_blocks=1)
)
train_policy_on_dataset(
    config, sys.argv[5], root, output, steps, batch_size=16, seed=5, resume_dir=output / "resume", resume_every=10,
    on_step=lambda *_: time.sleep(delay),  # a large model's pace, so that the run can be killed mid-way
)
"""


@pytest.mark.slow
def test_training_killed_after_a_resume_point_resumes_to_the_weights_of_an_uninterrupted_run(dataset, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from lerobot_flowstep.tools.lerobot_commands import offline_env

    steps = 40
    torch.set_num_threads(1)  # as the subprocess runs: the same kernels give the same weights
    _, reference, losses = train_policy_on_dataset(_config(), REPO_ID, dataset, tmp_path / "ref", steps, 16, seed=5)
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    env = offline_env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    output = tmp_path / "run"

    def start(delay: float) -> subprocess.Popen:
        args = [sys.executable, str(script), str(dataset), str(output), str(steps), str(delay), REPO_ID]
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    first = start(delay=0.2)
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine takes a while to import torch and LeRobot
        while not list((output / "resume").glob("0*")):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "no resume point in 300 s"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not (output / "pretrained_model").exists()
    second = start(delay=0.0)
    try:
        assert second.wait(timeout=300) == 0, second.stderr.read()
    finally:
        second.kill()
    resumed = load_file(output / "pretrained_model" / "model.safetensors")
    expected = load_file(reference / "model.safetensors")
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    assert not (output / "resume").exists()


def test_a_resume_point_of_another_run_is_refused(dataset, tmp_path):
    class Stop(Exception):
        pass

    def stop(step, *_):
        if step == 3:
            raise Stop

    resume = {"resume_dir": tmp_path / "resume", "resume_every": 2}
    with pytest.raises(Stop):
        train_policy_on_dataset(_config(), REPO_ID, dataset, tmp_path, 6, 8, on_step=stop, **resume)
    assert [p.name for p in (tmp_path / "resume").iterdir()] == ["000000002"]
    with pytest.raises(ValueError, match="differs in batch_size"):
        train_policy_on_dataset(_config(), REPO_ID, dataset, tmp_path, 6, 16, **resume)
