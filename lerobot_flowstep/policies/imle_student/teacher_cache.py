"""Teacher samples computed once per dataset frame, for distillation without the teacher in the loop.

Drawing M samples with N ODE steps for every observation of every batch dominates online distillation;
the samples of a frame do not change during distillation, so they are drawn once (with as many steps
and as accurate a solver as one likes) and looked up by the dataset's global frame `index`.
The file is safetensors: `samples` (num_frames, M, horizon, action_dim) in the teacher's normalized
action space and `index` (num_frames,), with the settings that made it in the metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from lerobot.policies.factory import make_pre_post_processors
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.tools.training import delta_timestamps


class TeacherCache:
    """Lookup of cached teacher samples by dataset frame index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No teacher cache at {self.path} (teacher_cache_path).")
        with safe_open(str(self.path), framework="pt") as f:
            self.metadata = f.metadata() or {}
            self.samples = f.get_tensor("samples")
            index = f.get_tensor("index")
        self._row = torch.full((int(index.max()) + 1,), -1, dtype=torch.long)
        self._row[index] = torch.arange(len(index))

    @property
    def num_samples(self) -> int:
        return self.samples.shape[1]

    def lookup(self, index: Tensor) -> Tensor:
        """Samples (B, M, horizon, action_dim) for global frame indices (B,)."""
        index = index.long().cpu()
        rows = torch.where(index < len(self._row), self._row[index.clamp(max=len(self._row) - 1)], -1)
        if bool((rows < 0).any()):
            missing = index[rows < 0][:5].tolist()
            raise KeyError(
                f"Frames {missing} are not in the teacher cache {self.path}; was it built for this dataset "
                f"({self.metadata.get('repo_id')} at {self.metadata.get('root')})?"
            )
        return self.samples[rows]


@torch.no_grad()
def sample_teacher(
    teacher: FlowstepTeacherPolicy,
    batches: Iterable[dict[str, Tensor]],
    num_samples: int,
    num_steps: int,
    solver: str,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Teacher chunks for preprocessed batches that carry the dataset's `index`: (samples, index)."""
    generator = torch.Generator(device=next(teacher.parameters()).device).manual_seed(seed)
    samples, indices = [], []
    for batch in batches:
        indices.append(batch["index"].long().cpu())
        chunk = teacher.sample(batch, num_samples, generator=generator, num_steps=num_steps, solver=solver)
        samples.append(chunk.cpu())
    return torch.cat(samples).contiguous(), torch.cat(indices)


def write_teacher_cache(samples: Tensor, index: Tensor, output: Path, metadata: dict[str, str]) -> Path:
    """Atomic write: an interrupted run leaves no cache file behind."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    try:
        save_file({"samples": samples, "index": index}, str(tmp), metadata)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def cache_metadata(
    teacher: FlowstepTeacherPolicy, teacher_path: str, num_samples: int, num_steps: int, solver: str, seed: int
) -> dict[str, str]:
    return {
        "teacher_path": str(teacher_path),
        "num_samples": str(num_samples),
        "num_steps": str(num_steps),
        "solver": solver,
        "seed": str(seed),
        "config": json.dumps({"horizon": teacher.config.horizon, "action_dim": teacher.config.action_dim}),
    }


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
    preprocessor, _ = make_pre_post_processors(teacher.config, pretrained_path=str(teacher_path))
    processed = preprocessor(dict(samples))
    frames = len(samples["index"])
    batches = (
        {k: v[i : i + batch_size] for k, v in processed.items() if isinstance(v, Tensor) and len(v) == frames}
        for i in tqdm(range(0, frames, batch_size), desc=f"teacher samples ({num_samples} x {num_steps} {solver})")
    )
    cached, index = sample_teacher(teacher, batches, num_samples, num_steps, solver, seed)
    metadata = {**cache_metadata(teacher, teacher_path, num_samples, num_steps, solver, seed), **(extra_metadata or {})}
    return write_teacher_cache(cached, index, output, metadata)


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
    preprocessor, _ = make_pre_post_processors(teacher.config, pretrained_path=str(teacher_path))
    deltas = delta_timestamps(teacher.config, LeRobotDatasetMetadata(repo_id, root=root))
    dataset = LeRobotDataset(repo_id, root=root, delta_timestamps=deltas)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    desc = f"teacher samples ({num_samples} x {num_steps} {solver} steps)"
    batches = (preprocessor(batch) for batch in tqdm(loader, desc=desc, unit="batch"))
    samples, index = sample_teacher(teacher, batches, num_samples, num_steps, solver, seed)
    metadata = cache_metadata(teacher, teacher_path, num_samples, num_steps, solver, seed)
    return write_teacher_cache(samples, index, output, {**metadata, "repo_id": repo_id, "root": str(root)})
