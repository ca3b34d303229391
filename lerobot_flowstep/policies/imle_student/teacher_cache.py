"""Teacher samples computed once per dataset frame, for distillation without the teacher in the loop: the
file format, its reader and its writer.

Drawing M samples with N ODE steps for every observation of every batch dominates online distillation;
the samples of a frame do not change during distillation, so they are drawn once (with as many steps
and as accurate a solver as one likes, by `lerobot_flowstep.tools.cache_teacher`) and looked up by the
dataset's global frame `index`. The file is safetensors: `samples` (num_frames, M, horizon, action_dim) in
the teacher's normalized action space, `latents` of the same shape (the noise each sample's ODE started
from, which paired distillation regresses on; caches written before they were kept lack them) and `index`
(num_frames,), with the settings that made it in the metadata (`cache_metadata`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor


def read_cache_metadata(path: str | Path) -> dict[str, str]:
    """The settings a cache was made with (teacher, samples, steps, solver, dataset), without its tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No teacher cache at {path} (teacher_cache_path).")
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def cache_has_latents(path: str | Path) -> bool:
    """Whether the cache keeps each sample's latent (caches written before they were kept do not)."""
    with safe_open(str(path), framework="pt") as f:
        return "latents" in f.keys()


def cache_metadata(
    horizon: int, action_dim: int, teacher_path: str, num_samples: int, num_steps: int, solver: str, seed: int
) -> dict[str, str]:
    """The metadata `read_cache_metadata` returns, for a cache about to be written."""
    return {
        "teacher_path": str(teacher_path),
        "num_samples": str(num_samples),
        "num_steps": str(num_steps),
        "solver": solver,
        "seed": str(seed),
        "config": json.dumps({"horizon": horizon, "action_dim": action_dim}),
    }


def write_teacher_cache(
    samples: Tensor, index: Tensor, output: Path, metadata: dict[str, str], latents: Tensor | None = None
) -> Path:
    """Atomic write: an interrupted run leaves no cache file behind."""
    output = Path(output)
    if latents is not None and latents.shape != samples.shape:
        raise ValueError(f"latents {tuple(latents.shape)} must match samples {tuple(samples.shape)}.")
    tensors = {"samples": samples, "index": index} | ({} if latents is None else {"latents": latents})
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    try:
        save_file(tensors, str(tmp), metadata)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


class TeacherCache:
    """Lookup of cached teacher samples by dataset frame index, on one device (`to`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metadata = read_cache_metadata(self.path)
        with safe_open(str(self.path), framework="pt") as f:
            self.samples = f.get_tensor("samples")
            index = f.get_tensor("index")
        self.has_latents = cache_has_latents(self.path)
        # Read on first use: only paired distillation needs them, and they are as large as the samples.
        self.latents: Tensor | None = None
        # Row of each frame index, -1 where the cache has none; a dense table makes a lookup one gather.
        self._row = torch.full((int(index.max()) + 1,), -1, dtype=torch.long)
        self._row[index] = torch.arange(len(index))

    @property
    def num_samples(self) -> int:
        return self.samples.shape[1]

    @property
    def device(self) -> torch.device:
        return self.samples.device

    def to(self, device: torch.device | str) -> TeacherCache:
        self.samples = self.samples.to(device)
        self._row = self._row.to(device)
        if self.latents is not None:
            self.latents = self.latents.to(device)
        return self

    def _rows(self, index: Tensor) -> tuple[Tensor, Tensor]:
        index = index.to(self._row.device, torch.long)
        last = len(self._row) - 1
        rows = self._row[index.clamp(0, last)]
        return rows.clamp(min=0), (rows < 0) | (index > last) | (index < 0)

    def _columns(self, rows: Tensor, num: int | None) -> Tensor | slice:
        """Which of its samples each row contributes: all of them, or `num` drawn afresh per row and call
        without replacement, so that over training every cached sample is a target, not only the first `num`
        (a frame's targets then differ from step to step, as with online sampling)."""
        total = self.num_samples
        if num is None or num == total:
            return slice(None)
        if not 0 < num < total:
            raise ValueError(f"The teacher cache {self.path} holds {total} samples per frame; cannot draw {num}.")
        return torch.rand(len(rows), total, device=rows.device).argsort(dim=1)[:, :num]

    def _take(self, tensor: Tensor, rows: Tensor, columns: Tensor | slice) -> Tensor:
        return tensor[rows] if isinstance(columns, slice) else tensor[rows[:, None], columns]

    def lookup(self, index: Tensor, num: int | None = None) -> tuple[Tensor, Tensor]:
        """Samples (B, M, horizon, action_dim) for global frame indices (B,), and which of them the cache lacks
        (B,) bool; those rows hold another frame's samples. With `num`, M = `num` samples drawn at random from
        each frame's (`_columns`), else all of them. Nothing is read back to the host, so the caller decides
        when to look at `missing` (`missing_frames_error`)."""
        rows, missing = self._rows(index)
        return self._take(self.samples, rows, self._columns(rows, num)), missing

    def lookup_pairs(self, index: Tensor, num: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Like `lookup`, with the latent each sample was drawn from: (samples, latents, missing)."""
        if not self.has_latents:
            raise ValueError(
                f"The teacher cache {self.path} holds no latents (it was written before they were kept), and "
                "paired_weight > 0 regresses on them: write it again with `lerobot-flowstep cache-teacher`."
            )
        if self.latents is None:
            with safe_open(str(self.path), framework="pt") as f:
                self.latents = f.get_tensor("latents").to(self.device)
        rows, missing = self._rows(index)
        columns = self._columns(rows, num)
        return self._take(self.samples, rows, columns), self._take(self.latents, rows, columns), missing

    def missing_frames_error(self, index: Tensor) -> KeyError:
        """The error for a batch with frames the cache lacks, naming up to five of them and the dataset the
        cache was built for."""
        _, missing = self.lookup(index)
        frames = index.reshape(-1)[missing.to(index.device)][:5].tolist()
        return KeyError(
            f"Frames {frames} are not in the teacher cache {self.path}; was it built for this dataset "
            f"({self.metadata.get('repo_id')} at {self.metadata.get('root')})?"
        )
