"""`lerobot-flowstep cache-teacher`: draw a teacher's samples for every frame of a dataset into the cache
file that `--policy.teacher_cache_path` reads (format: `policies/imle_student/teacher_cache.py`).

A cache of a large teacher takes hours on a CPU (the PushT U-Net: 25,650 frames x 16 latents x 10 steps), so
the job is drawn in shards of `shard_size` frames, each written atomically as soon as it is done: a killed job
resumes (`resume=True`) where it stopped, losing at most the shard in progress. Each shard draws from its own
seeded generator (`shard_seed`), so the result does not depend on how often the job was interrupted or on
how many processes drew it: processes started on the same job each claim the next free shard (an exclusive
lock the kernel drops when the process dies, so a killed worker never leaves a shard claimed) and the last
one to finish joins the shards into the cache file. `plan_cache` times a few batches and prints the cost per
frame and the job's ETA before one commits to it.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from torch import Tensor
from tqdm import tqdm

from lerobot_flowstep.datasets.video import video_backend
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.policies.imle_student.modeling_imle_student import observation_offsets, offset_observations
from lerobot_flowstep.policies.imle_student.teacher_cache import (
    assemble_shards,
    cache_metadata,
    identity_metadata,
    read_cache_metadata,
    shard_dir,
    shard_path,
    shard_range,
    shard_seed,
    start_job,
    write_shard,
)
from lerobot_flowstep.tools.checkpoints import load_processors

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a job is then drawn by one process at a time
    fcntl = None

# Preprocessed batches of the frames at some positions (in dataset order), each with the dataset's `index`.
FrameSource = Callable[[range], Iterable[dict[str, Tensor]]]


@dataclass
class TeacherDraws:
    """What `sample_teacher` drew: chunks (F, M, horizon, action_dim), the latent each chunk's ODE started from
    (same shape), the frames' dataset `index` (F,), and for a perturbed draw each chunk's observation offsets
    ({key: (F, M, dim)}; empty otherwise)."""

    samples: Tensor
    latents: Tensor
    index: Tensor
    offsets: dict[str, Tensor] = field(default_factory=dict)


def perturbed_keys(teacher: FlowstepTeacherPolicy) -> list[str]:
    """The observations a perturbed cache offsets: the teacher's state-like inputs."""
    keys = teacher.encoder.vector_keys
    if not keys:
        raise ValueError(
            f"observation_noise_std perturbs state-like observations (observation.state, "
            f"observation.environment_state); the teacher's inputs {teacher.encoder.input_keys} have none."
        )
    return keys


@torch.no_grad()
def sample_teacher(
    teacher: FlowstepTeacherPolicy,
    batches: Iterable[dict[str, Tensor]],
    num_samples: int,
    num_steps: int,
    solver: str,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
    observation_noise_std: float = 0.0,
) -> TeacherDraws:
    """Teacher chunks for preprocessed batches that carry the dataset's `index`. With `observation_noise_std`,
    each of a frame's `num_samples` chunks is drawn at its own perturbed copy of the frame's observation
    (`observation_offsets`; the offsets come from the same seeded generator as the latents). `on_batch(frames)`
    runs after each batch (progress)."""
    if observation_noise_std < 0:
        raise ValueError(f"observation_noise_std must be >= 0, got {observation_noise_std}.")
    generator = torch.Generator(device=next(teacher.parameters()).device).manual_seed(seed)
    keys = perturbed_keys(teacher) if observation_noise_std > 0 else []
    samples, latents, indices, offsets = [], [], [], {key: [] for key in keys}
    for batch in batches:
        indices.append(batch["index"].long().cpu())
        sampling = {"num_steps": num_steps, "solver": solver}
        if keys:
            drawn = observation_offsets(batch, keys, observation_noise_std, num_samples, generator)
            chunk, noise = teacher.sample_pairs(offset_observations(batch, drawn), 1, generator, **sampling)
            shape = (len(indices[-1]), num_samples, *chunk.shape[2:])  # frame-major, as offset_observations
            chunk, noise = chunk.reshape(shape), noise.reshape(shape)
            for key, offset in drawn.items():
                offsets[key].append(offset.cpu())
        else:
            chunk, noise = teacher.sample_pairs(batch, num_samples, generator, **sampling)
        samples.append(chunk.cpu())
        latents.append(noise.cpu())
        if on_batch is not None:
            on_batch(len(indices[-1]))
    return TeacherDraws(
        torch.cat(samples).contiguous(),
        torch.cat(latents).contiguous(),
        torch.cat(indices),
        {key: torch.cat(parts).contiguous() for key, parts in offsets.items()},
    )


def _metadata(
    teacher: FlowstepTeacherPolicy,
    teacher_path: str,
    num_samples: int,
    num_steps: int,
    solver: str,
    seed: int,
    observation_noise_std: float = 0.0,
) -> dict[str, str]:
    config = teacher.config
    return cache_metadata(
        config.horizon, config.action_dim, teacher_path, num_samples, num_steps, solver, seed, observation_noise_std
    )


@contextlib.contextmanager
def _claim(path: Path, wait: bool) -> Iterator[bool]:
    """Hold an exclusive lock on `path` for the body; yields whether it was obtained (with `wait`, always,
    once the holder lets go or dies). Not obtained either when `path`'s folder is gone: another process drew
    the last shards and assembled the cache, which removes the shard folder (the assembly step checks that)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR)
    except FileNotFoundError:
        yield False
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
        yield True
    finally:
        os.close(fd)  # closing the last descriptor drops the lock


def draw_cache(
    teacher: FlowstepTeacherPolicy,
    frames: FrameSource,
    num_frames: int,
    output: Path,
    metadata: dict[str, str],
    num_samples: int,
    num_steps: int,
    solver: str,
    seed: int = 0,
    shard_size: int | None = None,
    batch_size: int = 256,
    resume: bool = False,
    overwrite: bool = False,
    observation_noise_std: float = 0.0,
) -> Path:
    """Draw the cache of `num_frames` frames into `output` by shards of `shard_size` frames (None: one shard),
    in `output`'s shard folder (`shard_dir`), and join them when all are done.

    `resume`: continue an interrupted job with the same settings, or join one another process is drawing; a
    finished cache with the same settings is returned as it is. `overwrite`: replace a cache with other settings
    when the new one is complete, and start an interrupted job again (without `resume`). With neither, an
    existing cache or job is refused. `observation_noise_std`: a perturbed cache (`sample_teacher`).
    """
    output = Path(output)
    shard_size = shard_size or num_frames
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size ({shard_size}) and batch_size ({batch_size}) must be positive.")
    if output.exists():
        if resume and read_cache_metadata(output) == metadata:
            print(f"{output} is complete already.")
            return output
        if not overwrite:
            raise FileExistsError(f"{output} exists; remove it or choose another --output.")
    directory = shard_dir(output)
    if overwrite and not resume:
        shutil.rmtree(directory, ignore_errors=True)
    num_shards = math.ceil(num_frames / shard_size)
    job = metadata | {"num_frames": str(num_frames), "shard_size": str(shard_size), "batch_size": str(batch_size)}
    start_job(directory, job, resume)

    def done(shard: int) -> bool:
        return shard_path(directory, shard).exists()

    def frames_done() -> int:
        return sum(len(shard_range(k, shard_size, num_frames)) for k in range(num_shards) if done(k))

    drawn, started = 0, time.perf_counter()
    desc = f"teacher samples ({num_samples} x {num_steps} {solver} steps)"
    with tqdm(total=num_frames, initial=frames_done(), desc=desc, unit="frame", smoothing=0.05) as bar:
        pending = [k for k in range(num_shards) if not done(k)]
        # First the shards no other process holds, then the ones another holds: waiting for its lock either
        # finds its shard done or takes over the shard of a process that died.
        for wait in (False, True):
            for shard in pending:
                with _claim(directory / f"shard-{shard:05d}.lock", wait) as claimed:
                    if not claimed or done(shard):
                        continue
                    positions = shard_range(shard, shard_size, num_frames)
                    draws = sample_teacher(
                        teacher, frames(positions), num_samples, num_steps, solver, shard_seed(seed, shard),
                        bar.update, observation_noise_std,
                    )  # fmt: skip
                    write_shard(directory, shard, draws.samples, draws.latents, draws.index, draws.offsets)
                    drawn += len(positions)
                # Frames other processes finished meanwhile count towards the job's progress and ETA.
                bar.update(max(0, frames_done() - bar.n))
            pending = [k for k in pending if not done(k)]
    if drawn:
        cost = (time.perf_counter() - started) / drawn
        print(f"Drew {drawn} frames at {cost * 1e3:.1f} ms per frame ({num_samples} samples x {num_steps} {solver}).")
    with _claim(directory / "assemble.lock", wait=True):
        if not output.exists():  # else another process assembled it (and removed the shard folder)
            assemble_shards(directory, num_shards, output, metadata)
    return output


def plan_cache(
    teacher: FlowstepTeacherPolicy,
    frames: FrameSource,
    num_frames: int,
    num_samples: int,
    num_steps: int,
    solver: str,
    batch_size: int,
    plan_batches: int = 2,
    seed: int = 0,
    observation_noise_std: float = 0.0,
) -> dict[str, float]:
    """Time `plan_batches` batches of the job (after a warm-up batch), write nothing, and print the cost per
    frame and the ETA of the whole job on one and on two processes. Returns those numbers."""
    if num_frames < batch_size * (plan_batches + 1):
        raise ValueError(f"--plan needs {batch_size * (plan_batches + 1)} frames ({plan_batches} + 1 batches).")
    noise = {"observation_noise_std": observation_noise_std}
    sample_teacher(teacher, frames(range(batch_size)), num_samples, num_steps, solver, seed, **noise)
    timed = range(batch_size, batch_size * (plan_batches + 1))
    start = time.perf_counter()
    sample_teacher(teacher, frames(timed), num_samples, num_steps, solver, seed, **noise)
    per_frame = (time.perf_counter() - start) / len(timed)
    plan = {
        "s_per_frame": per_frame,
        "ms_per_sample_step": per_frame / (num_samples * num_steps) * 1e3,
        "eta_h_one_process": per_frame * num_frames / 3600,
        "eta_h_two_processes": per_frame * num_frames / 3600 / 2,
    }
    print(
        f"Plan: {per_frame * 1e3:.1f} ms per frame ({plan['ms_per_sample_step']:.3f} ms per sample and {solver} "
        f"step; {num_samples} samples x {num_steps} steps, batches of {batch_size} frames, "
        f"{torch.get_num_threads()} threads) -> {num_frames} frames: {plan['eta_h_one_process']:.2f} h on one "
        f"process, {plan['eta_h_two_processes']:.2f} h on two."
    )
    return plan


def memory_frames(teacher: FlowstepTeacherPolicy, teacher_path: str, samples: dict[str, Tensor], batch_size: int):
    """The frame source of dataset samples already in memory (`training.load_samples`): preprocessed once."""
    preprocessor, _ = load_processors(teacher.config, teacher_path, next(teacher.parameters()).device)
    processed = preprocessor(dict(samples))
    count = len(samples["index"])
    processed = {k: v for k, v in processed.items() if isinstance(v, Tensor) and len(v) == count}

    def frames(positions: range) -> Iterator[dict[str, Tensor]]:
        for start in range(positions.start, positions.stop, batch_size):
            stop = min(start + batch_size, positions.stop)
            yield {k: v[start:stop] for k, v in processed.items()}

    return frames


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
    dataset_meta: LeRobotDatasetMetadata | None = None,
    shard_size: int | None = None,
    resume: bool = False,
    observation_noise_std: float = 0.0,
) -> Path:
    """The cache for dataset samples already in memory (`training.load_samples`), e.g. in the demo, bound to
    the dataset of `dataset_meta` (the one the samples were read from). It replaces a cache at `output` made
    with other settings; `resume` continues an interrupted job by its shards (`draw_cache`)."""
    frames = memory_frames(teacher, teacher_path, samples, batch_size)
    metadata = _metadata(teacher, teacher_path, num_samples, num_steps, solver, seed, observation_noise_std)
    metadata |= identity_metadata(dataset_meta) if dataset_meta is not None else {}
    num_frames = len(samples["index"])
    return draw_cache(
        teacher, frames, num_frames, output, metadata, num_samples, num_steps, solver, seed, shard_size, batch_size,
        resume, overwrite=True, observation_noise_std=observation_noise_std,
    )  # fmt: skip


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
    shard_size: int | None = None,
    resume: bool = False,
    plan_batches: int = 0,
    observation_noise_std: float = 0.0,
) -> Path | dict[str, float]:
    """Draw `num_samples` teacher chunks for every frame of the dataset at `root` and write them to `output`
    (by shards of `shard_size` frames; `resume` continues or joins a job). With `plan_batches`, only time that
    many batches and return the plan (`plan_cache`)."""
    output = Path(output)
    teacher = FlowstepTeacherPolicy.from_pretrained(teacher_path).to(device).eval()
    preprocessor, _ = load_processors(teacher.config, teacher_path, device)
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    deltas = resolve_delta_timestamps(teacher.config, meta)
    dataset = LeRobotDataset(repo_id, root=root, delta_timestamps=deltas, video_backend=video_backend())

    def frames(positions: range) -> Iterator[dict[str, Tensor]]:
        subset = torch.utils.data.Subset(dataset, positions)
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)
        return (preprocessor(batch) for batch in loader)

    if plan_batches:
        return plan_cache(
            teacher, frames, len(dataset), num_samples, num_steps, solver, batch_size, plan_batches, seed,
            observation_noise_std,
        )  # fmt: skip
    metadata = _metadata(teacher, teacher_path, num_samples, num_steps, solver, seed, observation_noise_std)
    metadata |= identity_metadata(meta)
    return draw_cache(
        teacher, frames, len(dataset), output, metadata, num_samples, num_steps, solver, seed, shard_size, batch_size,
        resume, observation_noise_std=observation_noise_std,
    )  # fmt: skip
