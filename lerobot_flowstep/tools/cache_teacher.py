"""`lerobot-flowstep cache-teacher`: draw a teacher's samples for every frame of a dataset into the cache
file that `--policy.teacher_cache_path` reads (format: `policies/imle_student/teacher_cache.py`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from torch import Tensor
from tqdm import tqdm

from lerobot_flowstep.datasets.video import video_backend
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.policies.imle_student.teacher_cache import cache_metadata, write_teacher_cache
from lerobot_flowstep.tools.checkpoints import load_processors


@torch.no_grad()
def sample_teacher(
    teacher: FlowstepTeacherPolicy,
    batches: Iterable[dict[str, Tensor]],
    num_samples: int,
    num_steps: int,
    solver: str,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher chunks for preprocessed batches that carry the dataset's `index`: (samples, latents, index),
    the latents being the noise each chunk's ODE started from, shaped like the samples."""
    generator = torch.Generator(device=next(teacher.parameters()).device).manual_seed(seed)
    samples, latents, indices = [], [], []
    for batch in batches:
        indices.append(batch["index"].long().cpu())
        chunk, noise = teacher.sample_pairs(batch, num_samples, generator, num_steps=num_steps, solver=solver)
        samples.append(chunk.cpu())
        latents.append(noise.cpu())
    return torch.cat(samples).contiguous(), torch.cat(latents).contiguous(), torch.cat(indices)


def _metadata(
    teacher: FlowstepTeacherPolicy, teacher_path: str, num_samples: int, num_steps: int, solver: str, seed: int
) -> dict[str, str]:
    config = teacher.config
    return cache_metadata(config.horizon, config.action_dim, teacher_path, num_samples, num_steps, solver, seed)


def cache_from_samples(
    teacher: FlowstepTeacherPolicy,
    teacher_path: str,
    samples: dict[str, Tensor],
    output: Path,
    num_samples: int,
    num_steps: int,
    solver: str,
    seed: int = 0,
    batch_size: int = 512,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """The cache for dataset samples already in memory (`training.load_samples`), e.g. in the demo."""
    preprocessor, _ = load_processors(teacher.config, teacher_path, next(teacher.parameters()).device)
    processed = preprocessor(dict(samples))
    frames = len(samples["index"])
    batches = (
        {k: v[i : i + batch_size] for k, v in processed.items() if isinstance(v, Tensor) and len(v) == frames}
        for i in tqdm(range(0, frames, batch_size), desc=f"teacher samples ({num_samples} x {num_steps} {solver})")
    )
    cached, latents, index = sample_teacher(teacher, batches, num_samples, num_steps, solver, seed)
    metadata = {**_metadata(teacher, teacher_path, num_samples, num_steps, solver, seed), **(extra_metadata or {})}
    return write_teacher_cache(cached, index, output, metadata, latents)


def build_teacher_cache(
    teacher_path: str,
    repo_id: str,
    root: Path,
    output: Path,
    num_samples: int = 16,
    num_steps: int = 20,
    solver: str = "heun",
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Draw `num_samples` teacher chunks for every frame of the dataset at `root` and write them to `output`."""
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} exists; remove it or choose another --output.")
    teacher = FlowstepTeacherPolicy.from_pretrained(teacher_path).to(device).eval()
    preprocessor, _ = load_processors(teacher.config, teacher_path, device)
    deltas = resolve_delta_timestamps(teacher.config, LeRobotDatasetMetadata(repo_id, root=root))
    dataset = LeRobotDataset(repo_id, root=root, delta_timestamps=deltas, video_backend=video_backend())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    desc = f"teacher samples ({num_samples} x {num_steps} {solver} steps)"
    batches = (preprocessor(batch) for batch in tqdm(loader, desc=desc, unit="batch"))
    samples, latents, index = sample_teacher(teacher, batches, num_samples, num_steps, solver, seed)
    metadata = _metadata(teacher, teacher_path, num_samples, num_steps, solver, seed)
    return write_teacher_cache(samples, index, output, {**metadata, "repo_id": repo_id, "root": str(root)}, latents)
