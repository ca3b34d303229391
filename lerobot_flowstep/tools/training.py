"""In-memory training for small datasets, writing checkpoints that `lerobot-eval` and `from_pretrained` load.

`lerobot-train` reads every sample through `LeRobotDataset.__getitem__`, which costs about 4.5 ms per frame
on this project's 2-core CI machine (Hugging Face `datasets` copies the feature schema on every row
access), so a batch of 64 takes ~0.3 s to load for a ~0.04 s update. For the small low-dimensional
datasets of the demo, the samples are read once through the very same `LeRobotDataset` (same
`delta_timestamps`, same padding) into tensors, and training runs from memory. Large or image datasets
belong to `lerobot-train`, which this module does not replace.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch
from lerobot.configs import PreTrainedConfig
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from lerobot.policies.factory import make_policy, make_pre_post_processors
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.processor import PolicyProcessorPipeline
from torch import Tensor
from tqdm import trange


def load_samples(
    repo_id: str,
    root: Path,
    config: PreTrainedConfig,
    meta: LeRobotDatasetMetadata,
    observation_keys: Collection[str] | None = None,
) -> dict[str, Tensor]:
    """Every training sample of the dataset, stacked: {key: (num_frames, ...)}.

    `observation_keys`: keep only these observation features (the policy's inputs), so that a camera dataset
    fits in memory; without it, a dataset with cameras is refused.
    """
    dataset = LeRobotDataset(repo_id, root=root, delta_timestamps=resolve_delta_timestamps(config, meta))
    if dataset.meta.camera_keys and observation_keys is None:
        raise ValueError(
            f"{root} holds camera features {dataset.meta.camera_keys}; in-memory training is for small datasets. "
            "Name the observation features to keep (observation_keys), or train with lerobot-train."
        )

    def kept(key: str) -> bool:
        return observation_keys is None or not key.startswith("observation.") or key in observation_keys

    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=False, num_workers=0)
    chunks: dict[str, list[Tensor]] = {}
    for batch in loader:
        for key, value in batch.items():
            if isinstance(value, Tensor) and kept(key):
                chunks.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in chunks.items()}


def train_in_memory(
    policy: PreTrainedPolicy,
    samples: dict[str, Tensor],
    preprocessor: PolicyProcessorPipeline,
    steps: int,
    batch_size: int,
    seed: int = 0,
    desc: str = "train",
) -> list[float]:
    """Train with the policy's own optimizer and scheduler presets; returns the loss per step."""
    config = policy.config
    optimizer_cfg = config.get_optimizer_preset()
    optimizer = optimizer_cfg.build(policy.get_optim_params())
    scheduler_cfg = config.get_scheduler_preset()
    scheduler = scheduler_cfg.build(optimizer, steps) if scheduler_cfg is not None else None
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    num_frames = next(iter(samples.values())).shape[0]
    # Normalization is deterministic, so the whole dataset goes through the preprocessor once.
    processed = preprocessor(dict(samples))
    processed = {k: v for k, v in processed.items() if isinstance(v, Tensor) and v.shape[:1] == (num_frames,)}
    policy.train()
    losses = []
    bar = trange(steps, desc=desc, unit="step")
    for _ in bar:
        index = torch.randint(0, num_frames, (batch_size,), generator=generator)
        loss, _ = policy.forward({k: v[index] for k, v in processed.items()})
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), optimizer_cfg.grad_clip_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    policy.eval()
    return losses


def save_checkpoint(
    policy: PreTrainedPolicy,
    preprocessor: PolicyProcessorPipeline,
    postprocessor: PolicyProcessorPipeline,
    directory: Path,
) -> Path:
    """Write policy, config and processors as lerobot-train does under `pretrained_model/`."""
    directory.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(directory)
    preprocessor.save_pretrained(directory)
    postprocessor.save_pretrained(directory)
    return directory


def train_policy_on_dataset(
    config: PreTrainedConfig,
    repo_id: str,
    root: Path,
    output_dir: Path,
    steps: int,
    batch_size: int,
    seed: int = 0,
    desc: str = "train",
    samples: dict[str, Tensor] | None = None,
) -> tuple[PreTrainedPolicy, Path, list[float]]:
    """Build the policy from the dataset's features and stats, train it, save a loadable checkpoint."""
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    policy = make_policy(config, ds_meta=meta)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=meta.stats)
    if samples is None:
        samples = load_samples(repo_id, root, config, meta)
    losses = train_in_memory(policy, samples, preprocessor, steps, batch_size, seed, desc)
    checkpoint = save_checkpoint(policy, preprocessor, postprocessor, output_dir / "pretrained_model")
    return policy, checkpoint, losses
