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

import json
import os
import shutil
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import draccus
import torch
from lerobot.common.train_utils import load_training_state, save_training_state
from lerobot.configs import PreTrainedConfig
from lerobot.datasets import EpisodeAwareSampler
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from lerobot.policies.factory import make_policy, make_pre_post_processors
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.processor import PolicyProcessorPipeline
from lerobot.utils.constants import PRETRAINED_MODEL_DIR
from lerobot.utils.random_utils import set_seed
from safetensors.torch import load_model
from torch import Tensor
from tqdm import trange

from lerobot_flowstep.datasets.video import video_backend

RUN_FILE = "run.json"
LOSSES_FILE = "losses.json"


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
    resume_dir: Path | None = None,
    resume_every: int = 0,
    run: dict | None = None,
) -> list[float]:
    """Train with the policy's own optimizer and scheduler presets; returns the loss per step.

    `samples` holds every frame of the dataset in index order (`load_samples`); `batches` yields the frame
    indices of each step (`episode_aware_batches`). `on_step(step)` runs after each update (1-based), e.g. to
    save intermediate checkpoints.

    `resume_dir`: every `resume_every` steps the training state (weights, optimizer, scheduler, RNG, step,
    losses; LeRobot's `training_state` layout) is kept there (`save_resume_point`), and a run started again
    continues from the newest one, to the same weights as a run never stopped. `run` (JSON) describes the run;
    a resume point of another run is refused. Resume points are removed once training is done.
    """
    config = policy.config
    optimizer_cfg = config.get_optimizer_preset()
    optimizer = optimizer_cfg.build(policy.get_optim_params())
    scheduler_cfg = config.get_scheduler_preset()
    scheduler = scheduler_cfg.build(optimizer, steps) if scheduler_cfg is not None else None
    torch.manual_seed(seed)
    losses: list[float] = []
    if resume_dir is not None:
        run = {"steps": steps, "seed": seed} | (run or {})
        losses = load_resume_point(Path(resume_dir), run, policy, optimizer, scheduler)
        for _ in losses:  # the frames of the steps already taken, drawn (not trained on) to reach the same order
            next(batches)
    num_frames = next(iter(samples.values())).shape[0]
    if "index" in samples and not torch.equal(samples["index"], torch.arange(num_frames)):
        raise ValueError("samples must hold every frame of the dataset in index order (see load_samples).")
    # Normalization is deterministic, so the whole dataset goes through the preprocessor once.
    processed = preprocessor(dict(samples))
    processed = {k: v for k, v in processed.items() if isinstance(v, Tensor) and v.shape[:1] == (num_frames,)}
    policy.train()
    bar = trange(len(losses), steps, initial=len(losses), total=steps, desc=desc, unit="step")
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
        if resume_dir is not None and resume_every and (step + 1) % resume_every == 0 and step + 1 < steps:
            save_resume_point(Path(resume_dir), run, policy, optimizer, scheduler, losses)
        if on_step is not None:
            on_step(step + 1)
    policy.eval()
    return losses


def _resume_points(resume_dir: Path) -> list[Path]:
    """The complete resume points, oldest first (a point is complete once renamed to its step number)."""
    if not resume_dir.is_dir():
        return []
    return sorted(p for p in resume_dir.iterdir() if p.name.isdigit() and p.is_dir())


def save_resume_point(
    resume_dir: Path,
    run: dict,
    policy: PreTrainedPolicy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    losses: list[float],
) -> Path:
    """Write the training state after `len(losses)` steps to `resume_dir/<step>`, atomically (built in a
    temporary folder, then renamed), and then remove the older points: a kill at any moment leaves a complete
    point."""
    step = len(losses)
    resume_dir.mkdir(parents=True, exist_ok=True)
    tmp = resume_dir / f".{step:09d}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp / PRETRAINED_MODEL_DIR)
    save_training_state(tmp, step, optimizer, scheduler)
    (tmp / RUN_FILE).write_text(json.dumps(run, sort_keys=True, default=str))
    (tmp / LOSSES_FILE).write_text(json.dumps(losses))
    point = resume_dir / f"{step:09d}"
    shutil.rmtree(point, ignore_errors=True)
    os.replace(tmp, point)
    for old in _resume_points(resume_dir):
        if old != point:
            shutil.rmtree(old, ignore_errors=True)
    return point


def load_resume_point(
    resume_dir: Path,
    run: dict,
    policy: PreTrainedPolicy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> list[float]:
    """Restore the newest resume point in `resume_dir` (weights, optimizer, scheduler, RNG) and return the
    losses of its steps; [] when there is none. A point written by another run (`run` differs) is refused."""
    for stale in resume_dir.glob(".*.partial") if resume_dir.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)  # a write that a kill interrupted
    points = _resume_points(resume_dir)
    if not points:
        return []
    point = points[-1]
    recorded = json.loads((point / RUN_FILE).read_text())
    current = json.loads(json.dumps(run, sort_keys=True, default=str))
    differing = sorted(k for k in recorded.keys() | current.keys() if recorded.get(k) != current.get(k))
    if differing:
        raise ValueError(
            f"The resume point {point} belongs to another run (it differs in {', '.join(differing)}): remove "
            f"{resume_dir} to start this run afresh, or run with the settings it was made with."
        )
    load_model(policy, str(point / PRETRAINED_MODEL_DIR / "model.safetensors"), strict=True)
    step, _, _ = load_training_state(point, optimizer, scheduler)
    losses = json.loads((point / LOSSES_FILE).read_text())
    if step != len(losses):
        raise ValueError(f"The resume point {point} is inconsistent: step {step} but {len(losses)} losses.")
    print(f"Resuming from step {step} ({point}).")
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
    resume_dir: Path | None = None,
    resume_every: int = 0,
) -> tuple[PreTrainedPolicy, Path, list[float]]:
    """Build the policy from the dataset's features and stats, train it, save a loadable checkpoint.

    `episodes`: train on these episodes only (None: all), as `--dataset.episodes` does for `lerobot-train`.
    `on_step(step, policy, preprocessor, postprocessor)`: called after each update, e.g. to save intermediate
    checkpoints with the processors the final one is saved with. `resume_dir`, `resume_every`: resumable
    training (`train_in_memory`); the resume points are removed once the checkpoint is saved.
    """
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    # Seeded before the weights are drawn, as lerobot-train does: the run is then one function of its seed, not
    # of what the process drew before (and a resumed run's reference is well defined).
    set_seed(seed)
    policy = make_policy(config, ds_meta=meta)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=meta.stats)
    if samples is None:
        samples = load_samples(repo_id, root, config, meta)
    batches = episode_aware_batches(meta, config, batch_size, seed, episodes)
    callback = (lambda step: on_step(step, policy, preprocessor, postprocessor)) if on_step is not None else None
    # What must be equal for a resume point to belong to this run (the config as given, before make_policy
    # filled in the dataset's features).
    run = {"batch_size": batch_size, "episodes": list(episodes) if episodes is not None else None}
    run["config"] = draccus.encode(config)
    losses = train_in_memory(
        policy, samples, preprocessor, steps, batches, seed, desc, callback, resume_dir, resume_every, run
    )
    checkpoint = save_checkpoint(policy, preprocessor, postprocessor, output_dir / "pretrained_model")
    if resume_dir is not None:
        shutil.rmtree(resume_dir, ignore_errors=True)
    return policy, checkpoint, losses
