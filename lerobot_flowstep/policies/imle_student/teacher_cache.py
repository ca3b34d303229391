"""Teacher samples computed once per dataset frame, for distillation without the teacher in the loop: the
file format, its reader and its writer, and the shards a long cache job is drawn in.

Drawing M samples with N ODE steps for every observation of every batch dominates online distillation;
the samples of a frame do not change during distillation, so they are drawn once (with as many steps
and as accurate a solver as one likes, by `lerobot_flowstep.tools.cache_teacher`) and looked up by the
dataset's global frame `index`. The file is safetensors: `samples` (num_frames, M, horizon, action_dim) in
the teacher's normalized action space, `latents` of the same shape (the noise each sample's ODE started
from, which paired distillation regresses on; caches written before they were kept lack them) and `index`
(num_frames,), with the settings that made it in the metadata (`cache_metadata`) and the identity of the
dataset it was drawn on (`dataset_identity`), which the student checks against the dataset it trains on.

A perturbed cache (drawn with an `observation_noise_std` > 0, which its metadata records) labels observations
the dataset lacks: each sample was drawn at its frame's low-dimensional observations offset by Gaussian noise,
and the offsets are kept as `offset.<observation key>` (num_frames, M, dim), in the teacher's normalized units.

A long job is drawn in shards (`shard_dir`): each a cache file of its own for a range of frames, written
atomically, so a killed job loses at most the shard in progress; `assemble_shards` joins them into the one
file the student reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

logger = logging.getLogger(__name__)

IDENTITY_KEY = "dataset_identity"
# What must agree between a cache and the dataset for its frames to be that dataset's frames. The repo id and
# root are recorded too, to name both sides, but a dataset copied or converted again to another place is the
# same dataset.
IDENTITY_FIELDS = ("num_frames", "num_episodes", "episode_boundaries_sha256", "actions_sha256")
REQUIRED_TENSORS = ("samples", "index")
OFFSET_PREFIX = "offset."


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def dataset_actions(root: str | Path) -> np.ndarray:
    """Every frame's action (num_frames, action_dim) float32 in `index` order, read from the dataset's parquet
    files (two columns: cheap even for a camera dataset)."""
    import pyarrow.parquet as pq

    files = sorted((Path(root) / "data").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"No parquet data files under {Path(root) / 'data'}: not a local LeRobotDataset.")
    indices, actions = [], []
    for file in files:
        table = pq.read_table(file, columns=["index", "action"])
        indices.append(table.column("index").to_numpy())
        column = table.column("action").combine_chunks()
        actions.append(column.flatten().to_numpy().astype(np.float32).reshape(len(table), -1))
    index, action = np.concatenate(indices), np.concatenate(actions)
    return action[np.argsort(index, kind="stable")]


def dataset_identity(meta) -> dict[str, object]:
    """What identifies the frames of a dataset (`LeRobotDatasetMetadata`): frame and episode counts, a digest of
    the episode boundaries and one of every frame's action. A cache looks its samples up by global frame index
    only, so these are what must agree for index i to be the same frame."""
    boundaries = np.array([meta.episodes["dataset_from_index"], meta.episodes["dataset_to_index"]], dtype=np.int64)
    actions = dataset_actions(meta.root)
    return {
        "repo_id": meta.repo_id,
        "root": str(meta.root),
        "num_frames": int(meta.total_frames),
        "num_episodes": int(meta.total_episodes),
        "episode_boundaries_sha256": _digest(boundaries),
        "actions_sha256": _digest(actions),
    }


def identity_metadata(meta) -> dict[str, str]:
    """The cache metadata entries that bind a cache to the dataset of `meta`."""
    identity = dataset_identity(meta)
    return {IDENTITY_KEY: json.dumps(identity), "repo_id": identity["repo_id"], "root": identity["root"]}


def _describe(identity: dict[str, object]) -> str:
    return (
        f"{identity.get('repo_id')} at {identity.get('root')} ({identity.get('num_frames')} frames, "
        f"{identity.get('num_episodes')} episodes, episode boundaries {identity.get('episode_boundaries_sha256')}, "
        f"actions {identity.get('actions_sha256')})"
    )


def check_cache_matches_dataset(path: str | Path, meta) -> None:
    """Refuse a cache drawn on another dataset than `meta`'s, naming both. A cache written before caches
    recorded their dataset is checked on what it has: its frames must be exactly the dataset's frame indices
    (a warning says that nothing more could be checked)."""
    path = Path(path)
    metadata = read_cache_metadata(path)
    if IDENTITY_KEY not in metadata:
        with open_cache(path) as f:
            index = f.get_tensor("index")
        total = int(meta.total_frames)
        if len(index) != total or not torch.equal(index.sort().values, torch.arange(total, dtype=index.dtype)):
            raise ValueError(
                f"The teacher cache {path} holds {len(index)} frames (indices {int(index.min())}..{int(index.max())})"
                f", but the dataset {meta.repo_id} at {meta.root} has {total} (0..{total - 1}): it was drawn on "
                f"another dataset ({metadata.get('repo_id')} at {metadata.get('root')}). Draw one for this dataset "
                "with `lerobot-flowstep cache-teacher`."
            )
        logger.warning(
            "The teacher cache %s predates dataset identities: only its frame count (%d, as the dataset %s has) "
            "was checked, not its episodes or actions. Draw it again to have it checked.",
            path,
            total,
            meta.repo_id,
        )
        return
    cached = json.loads(metadata[IDENTITY_KEY])
    current = dataset_identity(meta)
    differing = [key for key in IDENTITY_FIELDS if cached.get(key) != current[key]]
    if differing:
        raise ValueError(
            f"The teacher cache {path} was drawn on another dataset than the one being trained on (they differ in "
            f"{', '.join(differing)}): the cache's dataset is {_describe(cached)}, this one is "
            f"{_describe(current)}. Frames are looked up by index, so its samples would be another frame's. Draw "
            "a cache for this dataset with `lerobot-flowstep cache-teacher`."
        )


def check_perturbed_cache(cache: TeacherCache, observation_noise_std: float, keys: list[str]) -> None:
    """Refuse a perturbed cache that was drawn at another noise than the student is configured with, or that
    offsets other observations than the student's state-like inputs `keys`."""
    cache.require_offsets()
    if cache.observation_noise_std != observation_noise_std:
        raise ValueError(
            f"The perturbed cache {cache.path} was drawn with observation_noise_std={cache.observation_noise_std}, "
            f"the student is configured with {observation_noise_std}: set --policy.observation_noise_std="
            f"{cache.observation_noise_std}, or draw the cache again at {observation_noise_std}."
        )
    if sorted(cache.offsets) != sorted(keys):
        raise ValueError(
            f"The perturbed cache {cache.path} offsets {sorted(cache.offsets)}, but the student's state-like "
            f"inputs are {sorted(keys)}: it was drawn for another policy's inputs."
        )


def _not_a_cache(path: Path, reason: str) -> ValueError:
    return ValueError(
        f"{path} is not a readable teacher cache: {reason}. Give --policy.teacher_cache_path the .safetensors file "
        "that `lerobot-flowstep cache-teacher` wrote, or draw it again."
    )


def _unreadable_reason(path: Path, error: Exception) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, size - 4))
        tail = f.read(4)
    if head[:4] == b"PAR1" or tail == b"PAR1":
        return "it is a Parquet file (a dataset's data?), not a safetensors file"
    if size < 8:
        return f"it is {size} bytes long, shorter than a safetensors header"
    header = int.from_bytes(head, "little")
    if header > size - 8:
        return (
            f"its header claims {header} bytes but the file holds {size}: it is truncated (an interrupted copy or "
            f"write) or not a safetensors file ({type(error).__name__}: {error})"
        )
    with open(path, "rb") as f:
        f.seek(8)
        try:
            entries = json.loads(f.read(header))
            expected = 8 + header + max(v["data_offsets"][1] for k, v in entries.items() if k != "__metadata__")
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"it is not a safetensors file ({type(error).__name__}: {error})"
    if expected > size:
        return f"it is truncated: {size} bytes of the {expected} its header lists (an interrupted copy or write)"
    return f"it is not a readable safetensors file ({type(error).__name__}: {error})"


@contextlib.contextmanager
def open_cache(path: str | Path) -> Iterator:
    """`safe_open` on a cache file, with errors that name the file and say what is wrong with it: missing,
    truncated, another kind of file, or a safetensors file without a cache's tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No teacher cache at {path} (teacher_cache_path).")
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as error:  # safetensors raises its own error type, and OSError on some platforms
        raise _not_a_cache(path, _unreadable_reason(path, error)) from error
    with handle as f:
        missing = [name for name in REQUIRED_TENSORS if name not in f.keys()]
        if missing:
            raise _not_a_cache(
                path, f"it holds the tensors {sorted(f.keys())[:8]} but no {missing} (a model's weights?)"
            )
        yield f


def read_cache_metadata(path: str | Path) -> dict[str, str]:
    """The settings a cache was made with (teacher, samples, steps, solver, dataset), without its tensors."""
    with open_cache(path) as f:
        return f.metadata() or {}


def cache_has_latents(path: str | Path) -> bool:
    """Whether the cache keeps each sample's latent (caches written before they were kept do not)."""
    with open_cache(path) as f:
        return "latents" in f.keys()


def cache_metadata(
    horizon: int,
    action_dim: int,
    teacher_path: str,
    num_samples: int,
    num_steps: int,
    solver: str,
    seed: int,
    observation_noise_std: float = 0.0,
) -> dict[str, str]:
    """The metadata `read_cache_metadata` returns, for a cache about to be written. A cache at the stored
    observations records no noise, so its metadata (and an interrupted job of it) reads as before noise existed."""
    metadata = {
        "teacher_path": str(teacher_path),
        "num_samples": str(num_samples),
        "num_steps": str(num_steps),
        "solver": solver,
        "seed": str(seed),
        "config": json.dumps({"horizon": horizon, "action_dim": action_dim}),
    }
    return metadata | ({"observation_noise_std": str(observation_noise_std)} if observation_noise_std > 0 else {})


def _check_offsets(samples: Tensor, offsets: dict[str, Tensor]) -> None:
    for key, offset in offsets.items():
        if offset.ndim != 3 or offset.shape[:2] != samples.shape[:2]:
            raise ValueError(
                f"offsets of '{key}' {tuple(offset.shape)} must be (frames, samples, dim) with the samples' "
                f"{tuple(samples.shape[:2])}."
            )


def write_teacher_cache(
    samples: Tensor,
    index: Tensor,
    output: Path,
    metadata: dict[str, str],
    latents: Tensor | None = None,
    offsets: dict[str, Tensor] | None = None,
) -> Path:
    """Atomic write: an interrupted run leaves no cache file behind. `offsets`: a perturbed cache's observation
    offsets by observation key (see the module docstring)."""
    output = Path(output)
    if latents is not None and latents.shape != samples.shape:
        raise ValueError(f"latents {tuple(latents.shape)} must match samples {tuple(samples.shape)}.")
    offsets = offsets or {}
    _check_offsets(samples, offsets)
    tensors = {"samples": samples, "index": index} | ({} if latents is None else {"latents": latents})
    tensors |= {OFFSET_PREFIX + key: offset.contiguous() for key, offset in offsets.items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f"{output.name}.{os.getpid()}.partial")
    try:
        save_file(tensors, str(tmp), metadata)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def shard_dir(output: str | Path) -> Path:
    """Where the shards of the cache `output` are drawn: beside it, so that assembling it is one rename."""
    output = Path(output)
    return output.with_name(output.name + ".shards")


def shard_path(directory: Path, shard: int) -> Path:
    return directory / f"shard-{shard:05d}.safetensors"


def shard_range(shard: int, shard_size: int, num_frames: int) -> range:
    """The positions (in dataset order) of the frames of one shard."""
    return range(shard * shard_size, min((shard + 1) * shard_size, num_frames))


def shard_seed(seed: int, shard: int) -> int:
    """The seed of one shard's generator: a shard draws the same samples whoever draws it and whenever, and
    shard 0 draws with `seed` itself, so a one-shard job draws what the unsharded writer drew."""
    return seed + shard * 2**32


JOB_FILE = "job.json"


def start_job(directory: Path, job: dict[str, str], resume: bool) -> None:
    """Record the settings of a sharded job in `directory`, or check them against the ones there: shards of
    two different jobs are never mixed. Without `resume`, an existing job is refused (it holds work)."""
    path = directory / JOB_FILE
    if path.exists():
        if not resume:
            done = len(list(directory.glob("shard-*.safetensors")))
            raise FileExistsError(
                f"{directory} holds an interrupted cache job ({done} shards done): pass --resume to continue it "
                "(or to join it from a second process), or remove the folder."
            )
    else:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{JOB_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(job, indent=2, sort_keys=True))
        try:
            os.link(tmp, path)  # create-if-absent with its whole content: a concurrent starter sees all or nothing
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    recorded = json.loads(path.read_text())
    differing = sorted(k for k in job.keys() | recorded.keys() if job.get(k) != recorded.get(k))
    if differing:
        details = "; ".join(f"{k}: {recorded.get(k)!r} there, {job.get(k)!r} now" for k in differing)
        raise ValueError(
            f"{directory} holds shards of a cache job with other settings ({details}). Rerun with its settings, "
            "or remove the folder to start again."
        )


def write_shard(
    directory: Path,
    shard: int,
    samples: Tensor,
    latents: Tensor,
    index: Tensor,
    offsets: dict[str, Tensor] | None = None,
) -> Path:
    """One shard, atomically (a temporary file renamed into place): a shard file that exists is complete."""
    path = shard_path(directory, shard)
    tmp = directory / f".{path.name}.{os.getpid()}.partial"
    offsets = offsets or {}
    _check_offsets(samples, offsets)
    tensors = {"samples": samples.contiguous(), "latents": latents.contiguous(), "index": index}
    tensors |= {OFFSET_PREFIX + key: offset.contiguous() for key, offset in offsets.items()}
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def assemble_shards(directory: Path, num_shards: int, output: Path, metadata: dict[str, str]) -> Path:
    """Join the shards, in order, into the one cache file at `output` (atomically), then remove them."""
    parts: dict[str, list[Tensor]] = {}
    for shard in range(num_shards):
        with open_cache(shard_path(directory, shard)) as f:
            for name in f.keys():
                parts.setdefault(name, []).append(f.get_tensor(name))
    joined = {name: torch.cat(tensors) for name, tensors in parts.items()}
    offsets = {name.removeprefix(OFFSET_PREFIX): t for name, t in joined.items() if name.startswith(OFFSET_PREFIX)}
    write_teacher_cache(joined["samples"], joined["index"], output, metadata, joined["latents"], offsets)
    shutil.rmtree(directory, ignore_errors=True)
    return output


class TeacherCache:
    """Lookup of cached teacher samples by dataset frame index, on one device (`to`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metadata = read_cache_metadata(self.path)
        with open_cache(self.path) as f:
            try:
                self.samples = f.get_tensor("samples")
                index = f.get_tensor("index")
            except Exception as error:  # a header that reads but tensors that do not (a corrupted file)
                raise _not_a_cache(self.path, f"its tensors do not read ({type(error).__name__}: {error})") from error
            # Small (frames x samples x a state's dim): read with the samples.
            self.offsets = {
                name.removeprefix(OFFSET_PREFIX): f.get_tensor(name)
                for name in f.keys()
                if name.startswith(OFFSET_PREFIX)
            }
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

    @property
    def observation_noise_std(self) -> float:
        """The noise the samples' observations were perturbed by (0: drawn at the stored observations)."""
        return float(self.metadata.get("observation_noise_std", 0.0))

    def to(self, device: torch.device | str) -> TeacherCache:
        self.samples = self.samples.to(device)
        self.offsets = {key: offset.to(device) for key, offset in self.offsets.items()}
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

    def check_batch(self, batch: dict[str, Tensor], num: int, option: str, count: str) -> None:
        """Refuse a training batch that cannot be looked up: without dataset frame indices, or asking for more
        samples per frame (`count`, the config field) than the cache at `option` holds."""
        if "index" not in batch:
            raise KeyError(f"{option} is set but the batch has no 'index' (dataset frame index).")
        if self.num_samples < num:
            raise ValueError(
                f"{option}={self.path} holds {self.num_samples} samples per frame, fewer than {count}={num}."
            )

    def lookup(self, index: Tensor, num: int | None = None) -> tuple[Tensor, Tensor]:
        """Samples (B, M, horizon, action_dim) for global frame indices (B,), and which of them the cache lacks
        (B,) bool; those rows hold another frame's samples. With `num`, M = `num` samples drawn at random from
        each frame's (`_columns`), else all of them. Nothing is read back to the host, so the caller decides
        when to look at `missing` (`missing_frames_error`)."""
        rows, missing = self._rows(index)
        return self._take(self.samples, rows, self._columns(rows, num)), missing

    def lookup_pairs(self, index: Tensor, num: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Like `lookup`, with the latent each sample was drawn from: (samples, latents, missing)."""
        samples, latents, _, missing = self._lookup_with_latents(index, num)
        return samples, latents, missing

    def lookup_perturbed(
        self, index: Tensor, num: int | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
        """A perturbed cache's samples with their latents and the observation offsets each was drawn at
        ({key: (B, M, dim)}): (samples, latents, offsets, missing)."""
        self.require_offsets()
        return self._lookup_with_latents(index, num)

    def require_offsets(self) -> None:
        """Refuse a cache drawn at the dataset's own observations where a perturbed one is needed."""
        if not self.offsets:
            raise ValueError(
                f"The teacher cache {self.path} was drawn at the dataset's own observations (it holds no "
                "observation offsets): draw a perturbed one with `lerobot-flowstep cache-teacher "
                "--observation-noise-std <std>`."
            )

    def _lookup_with_latents(self, index: Tensor, num: int | None) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
        if not self.has_latents:
            raise ValueError(
                f"The teacher cache {self.path} holds no latents (it was written before they were kept), and "
                "paired_weight > 0 regresses on them: write it again with `lerobot-flowstep cache-teacher`."
            )
        if self.latents is None:
            with open_cache(self.path) as f:
                self.latents = f.get_tensor("latents").to(self.device)
        rows, missing = self._rows(index)
        columns = self._columns(rows, num)
        offsets = {key: self._take(offset, rows, columns) for key, offset in self.offsets.items()}
        return self._take(self.samples, rows, columns), self._take(self.latents, rows, columns), offsets, missing

    def missing_frames_error(self, index: Tensor) -> KeyError:
        """The error for a batch with frames the cache lacks, naming up to five of them and the dataset the
        cache was built for."""
        _, missing = self.lookup(index)
        frames = index.reshape(-1)[missing.to(index.device)][:5].tolist()
        return KeyError(
            f"Frames {frames} are not in the teacher cache {self.path}; was it built for this dataset "
            f"({self.metadata.get('repo_id')} at {self.metadata.get('root')})?"
        )
