"""In-memory training for small datasets, writing checkpoints that `lerobot-eval` and `from_pretrained` load.

`lerobot-train` reads every sample through `LeRobotDataset.__getitem__`, which costs about 4.5 ms per frame
on this project's 2-core CI machine (Hugging Face `datasets` copies the feature schema on every row
access), so a batch of 64 takes ~0.3 s to load for a ~0.04 s update. For the small low-dimensional
datasets of the demo and the benchmarks, the samples are read once through the very same `LeRobotDataset`
(same `delta_timestamps`, same padding) into tensors, and training runs from memory with `lerobot-train`'s
own pieces: LeRobot's `EpisodeAwareSampler` (the policy's `drop_n_last_frames`, the chosen episodes, the
same seeded order), the policy's optimizer and scheduler presets, and the same gradient clipping. So a run
draws the same frames in the same order as `lerobot-train` with the same seed and batch size. Large or
image datasets belong to `lerobot-train`, which this module does not replace.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import torch
from lerobot.configs import PreTrainedConfig
from lerobot.datasets import EpisodeAwareSampler
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from lerobot.policies.factory import make_policy, make_pre_post_processors
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.processor import PolicyProcessorPipeline
from torch import Tensor
from tqdm import trange

from lerobot_flowstep.datasets.video import video_backend


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
    dataset = LeRobotDataset(
        repo_id, root=root, delta_timestamps=resolve_delta_timestamps(config, meta), video_backend=video_backend()
    )
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


def episode_aware_batches(
    meta: LeRobotDatasetMetadata,
    config: PreTrainedConfig,
    batch_size: int,
    seed: int = 0,
    episodes: Sequence[int] | None = None,
) -> Iterator[Tensor]:
    """Frame indices (absolute, as the dataset's `index`), batch after batch, epoch after epoch, in the order
    `lerobot-train` draws them: its `EpisodeAwareSampler` with the policy's `drop_n_last_frames` (frames that
    cannot start a full chunk are never drawn), shuffled per epoch from `seed`, batched without dropping the
    short last batch of an epoch, as its `DataLoader(..., drop_last=False)` does."""
    sampler = EpisodeAwareSampler(
        meta.episodes["dataset_from_index"],
        meta.episodes["dataset_to_index"],
        episode_indices_to_use=list(episodes) if episodes is not None else None,
        drop_n_last_frames=getattr(config, "drop_n_last_frames", 0) or 0,
        shuffle=True,
        seed=seed,
    )
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False)
    while True:
        for batch in batches:  # each pass over the sampler is one epoch with its own permutation
            yield torch.tensor(batch)


def train_in_memory(
    policy: PreTrainedPolicy,
    samples: dict[str, Tensor],
    preprocessor: PolicyProcessorPipeline,
    steps: int,
    batches: Iterator[Tensor],
    seed: int = 0,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Train with the policy's own optimizer and scheduler presets; returns the loss per step.

    `samples` holds every frame of the dataset in index order (`load_samples`); `batches` yields the frame
    indices of each step (`episode_aware_batches`). `on_step(step)` runs after each update (1-based), e.g. to
    save intermediate checkpoints.
    """
    config = policy.config
    optimizer_cfg = config.get_optimizer_preset()
    optimizer = optimizer_cfg.build(policy.get_optim_params())
    scheduler_cfg = config.get_scheduler_preset()
    scheduler = scheduler_cfg.build(optimizer, steps) if scheduler_cfg is not None else None
    torch.manual_seed(seed)
    num_frames = next(iter(samples.values())).shape[0]
    if "index" in samples and not torch.equal(samples["index"], torch.arange(num_frames)):
        raise ValueError("samples must hold every frame of the dataset in index order (see load_samples).")
    # Normalization is deterministic, so the whole dataset goes through the preprocessor once.
    processed = preprocessor(dict(samples))
    processed = {k: v for k, v in processed.items() if isinstance(v, Tensor) and v.shape[:1] == (num_frames,)}
    policy.train()
    losses = []
    bar = trange(steps, desc=desc, unit="step")
    for step in bar:
        index = next(batches)
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
        if on_step is not None:
            on_step(step + 1)
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
    episodes: Sequence[int] | None = None,
    on_step: Callable[[int, PreTrainedPolicy, PolicyProcessorPipeline, PolicyProcessorPipeline], None] | None = None,
) -> tuple[PreTrainedPolicy, Path, list[float]]:
    """Build the policy from the dataset's features and stats, train it, save a loadable checkpoint.

    `episodes`: train on these episodes only (None: all), as `--dataset.episodes` does for `lerobot-train`.
    `on_step(step, policy, preprocessor, postprocessor)`: called after each update, e.g. to save intermediate
    checkpoints with the processors the final one is saved with.
    """
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    policy = make_policy(config, ds_meta=meta)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=meta.stats)
    if samples is None:
        samples = load_samples(repo_id, root, config, meta)
    batches = episode_aware_batches(meta, config, batch_size, seed, episodes)
    callback = (lambda step: on_step(step, policy, preprocessor, postprocessor)) if on_step is not None else None
    losses = train_in_memory(policy, samples, preprocessor, steps, batches, seed, desc, callback)
    checkpoint = save_checkpoint(policy, preprocessor, postprocessor, output_dir / "pretrained_model")
    return policy, checkpoint, losses
