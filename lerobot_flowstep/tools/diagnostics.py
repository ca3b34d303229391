"""How well a policy reproduces its teacher's distribution, and (on the embedded task) its modes.

- `sample_chamfer`: on held-out observations of any dataset, many samples from a policy against many
  from the teacher, both Chamfer directions (coverage: are all teacher modes reached; fidelity: does every
  sample lie near some teacher sample), in the teacher's normalized action space;
- `paired_errors`: the same observations and latents through a policy and its teacher, how far apart the
  chunks land (what paired distillation minimizes); `paired_error_by_distance` splits it by how far each
  observation lies from the frames the policy was trained on (`nearest_distances`);
- `MemoizedTeacher`: a teacher that draws each of those references once for a diagnosis of many policies;
- `rollout_mode_report`: closed-loop rollouts through LeRobot's own `eval_policy` on the `flowstep_obstacle`
  env: success rate, modes covered, normalized entropy of the mode histogram and the share of
  off-manifold (between-mode or colliding) trajectories.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from lerobot.configs import PreTrainedConfig
from lerobot.envs.factory import make_env, make_env_pre_post_processors
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.processor import PolicyProcessorPipeline
from lerobot.scripts.lerobot_eval import eval_policy
from lerobot.utils.constants import OBS_STATE
from torch import Tensor

from lerobot_flowstep.core.imle import chamfer_terms, energy_distance, paired_distances
from lerobot_flowstep.datasets.video import video_backend
from lerobot_flowstep.envs import ObstacleEnvConfig, ObstacleLayout, classify_trajectory
from lerobot_flowstep.policies.common.policy_base import FlowstepBasePolicy


@torch.no_grad()
def sample_chamfer(
    policy: FlowstepBasePolicy,
    teacher: FlowstepBasePolicy,
    batch: dict[str, Tensor],
    num_samples: int = 32,
    seed: int = 0,
    **teacher_generate_kwargs,
) -> dict[str, float]:
    """`policy` samples against `teacher` samples on preprocessed observations, means over observations:
    Chamfer coverage and fidelity, energy distance, and the spread ratio (mean distance between two policy
    samples over that between two teacher samples: below 1, the policy's samples are shrunk or collapsed)."""
    generator = torch.Generator().manual_seed(seed)
    teacher_samples = teacher.sample(batch, num_samples, generator=generator, **teacher_generate_kwargs)
    policy_samples = policy.sample(batch, num_samples, generator=generator)
    mask = ~batch["action_is_pad"] if "action_is_pad" in batch else None
    coverage, fidelity = chamfer_terms(teacher_samples, policy_samples, mask)
    energy, teacher_spread, policy_spread = energy_distance(teacher_samples, policy_samples, mask)
    return {
        "coverage": coverage.mean().item(),
        "fidelity": fidelity.mean().item(),
        "energy_distance": energy.mean().item(),
        "spread_ratio": (policy_spread.mean() / teacher_spread.mean()).item(),
    }


class MemoizedTeacher:
    """A teacher whose `sample` answers a call it has answered before from memory: a diagnosis that measures many
    policies (a student's checkpoints) against the same teacher samples draws them once. A call is the same when
    its batch is the same object and its latents, or its generator's state, sample count and settings are equal;
    on a repeat the generator is left in the state the first call left it in, so what the caller draws next is
    what it would have drawn. Everything else is the teacher's."""

    def __init__(self, teacher: FlowstepBasePolicy):
        self.teacher = teacher
        self._answers: dict[tuple, tuple[dict[str, Tensor], Tensor, Tensor | None]] = {}

    def __getattr__(self, name: str):
        return getattr(self.teacher, name)

    def sample(
        self,
        batch: dict[str, Tensor],
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        **generate_kwargs,
    ) -> Tensor:
        if generator is None and noise is None:  # fresh randomness: nothing to repeat
            return self.teacher.sample(batch, num_samples, **generate_kwargs)
        state = generator.get_state() if generator is not None else None
        key = (
            id(batch),
            num_samples,
            None if state is None else state.numpy().tobytes(),
            None if noise is None else noise.detach().cpu().numpy().tobytes(),
            tuple(sorted(generate_kwargs.items())),
        )
        if key not in self._answers:
            samples = self.teacher.sample(batch, num_samples, generator=generator, noise=noise, **generate_kwargs)
            # The batch is kept with its answer, so that its id cannot be reused by another batch meanwhile.
            self._answers[key] = (batch, samples, None if generator is None else generator.get_state())
        _, samples, after = self._answers[key]
        if generator is not None:
            generator.set_state(after)
        return samples


@torch.no_grad()
def paired_errors(
    policy: FlowstepBasePolicy,
    teacher: FlowstepBasePolicy,
    batch: dict[str, Tensor],
    num_samples: int = 32,
    seed: int = 0,
    executed_only: bool = False,
    **teacher_generate_kwargs,
) -> Tensor:
    """How far `policy`'s noise-to-chunk map is from `teacher`'s, per observation of the batch (B,): both fed the
    same latents, the mean squared distance between their chunks (`core.imle.paired_distances`) over the
    latents. Zero only for a policy that reproduces each of the teacher's samples, not just their distribution.

    `executed_only`: over the actions a rollout executes (`n_action_steps` from the current frame) instead of the
    whole chunk, whose first `n_obs_steps - 1` steps lie in the past and whose tail is re-planned before it is
    reached. A task decided by a few actions (PushT at contact) can hinge on an error the whole-chunk mean dilutes."""
    cond = policy.encode(batch)
    generator = torch.Generator(device=cond.device).manual_seed(seed)
    noise = policy.sample_noise(cond.shape[0] * num_samples, cond.device, generator)
    teacher_samples = teacher.sample(batch, num_samples, noise=noise, **teacher_generate_kwargs)
    policy_samples = policy.sample(batch, num_samples, cond=cond, noise=noise)
    mask = ~batch["action_is_pad"] if "action_is_pad" in batch else None
    if executed_only:
        config = policy.config
        start = config.n_obs_steps - 1
        executed = torch.zeros(config.horizon, dtype=torch.bool, device=cond.device)
        executed[start : start + config.n_action_steps] = True
        mask = executed.expand(cond.shape[0], -1) if mask is None else mask & executed
    return paired_distances(teacher_samples, policy_samples, mask).mean(dim=1)


def nearest_distances(queries: Tensor, references: Tensor, chunk: int = 1024) -> Tensor:
    """Euclidean distance from each query (N, D) to its nearest reference (M, D), (N,); in chunks of queries,
    so that memory stays at chunk x M."""
    if queries.shape[-1] != references.shape[-1] or len(references) == 0:
        raise ValueError(f"Cannot compare queries {tuple(queries.shape)} with references {tuple(references.shape)}.")
    return torch.cat([torch.cdist(q, references).min(dim=1).values for q in queries.split(chunk)])


def paired_error_by_distance(errors: Tensor, distances: Tensor, num_bins: int = 4) -> dict[str, list[float]]:
    """Mean per-observation error (N,) in `num_bins` bins of equal count by distance (N,) to the training frames:
    `edges` (num_bins + 1, from 0 to the largest distance) and each bin's `errors`. Far from the data the teacher's
    field is harder to follow, so even its own few-step samplers rise with distance; a policy that only fits its
    training frames rises faster than they do."""
    if errors.shape != distances.shape or len(errors) < num_bins:
        raise ValueError(f"Need one distance per error and at least {num_bins} of them, got {tuple(errors.shape)} "
                         f"and {tuple(distances.shape)}.")  # fmt: skip
    order = distances.argsort()
    bins = order.tensor_split(num_bins)
    edges = [0.0] + [distances[b].max().item() for b in bins]
    return {"edges": edges, "errors": [errors[b].mean().item() for b in bins]}


@dataclass
class ModeStatistics:
    success_rate: float
    modes_covered: int
    num_modes: int
    mode_entropy: float  # normalized to [0, 1] over the task's modes, on-manifold trajectories only
    off_manifold: float
    mode_histogram: list[float]  # share of all trajectories per mode

    def as_dict(self) -> dict:
        return asdict(self)


def mode_statistics(modes: np.ndarray, successes: np.ndarray, num_modes: int) -> ModeStatistics:
    """Summaries of per-episode mode labels (-1 = off-manifold) and success flags."""
    modes = np.asarray(modes)
    n = len(modes)
    counts = np.bincount(modes[modes >= 0], minlength=num_modes)[:num_modes]
    on_manifold = counts.sum()
    if on_manifold:
        p = counts[counts > 0] / on_manifold
        entropy = float(-(p * np.log(p)).sum() / math.log(num_modes))
    else:
        entropy = 0.0
    return ModeStatistics(
        success_rate=float(np.mean(successes)) if n else 0.0,
        modes_covered=int((counts > 0).sum()),
        num_modes=num_modes,
        mode_entropy=entropy,
        off_manifold=float((modes < 0).mean()) if n else 0.0,
        mode_histogram=(counts / max(n, 1)).tolist(),
    )


def episode_trajectories(episodes: dict[str, Tensor]) -> list[np.ndarray]:
    """Agent positions per episode from `eval_policy(..., return_episode_data=True)`.

    LeRobot appends the observation after the last action, which with same-step autoreset is the next
    episode's first observation; it is dropped.
    """
    index = episodes["episode_index"].numpy()
    states = episodes[OBS_STATE].numpy()
    done = episodes["next.done"].numpy()
    out = []
    for e in np.unique(index):
        rows = np.flatnonzero(index == e)
        last = rows[np.flatnonzero(done[rows])[0]] if done[rows].any() else rows[-1]
        out.append(states[rows[0] : last + 1])
    return out


def rollout_mode_report(
    policy: PreTrainedPolicy,
    preprocessor: PolicyProcessorPipeline,
    postprocessor: PolicyProcessorPipeline,
    num_modes: int,
    n_episodes: int,
    seed: int,
    batch_size: int = 25,
) -> tuple[ModeStatistics, list[np.ndarray]]:
    """Roll the policy out with LeRobot's `eval_policy` and classify each trajectory's mode."""
    env_cfg = ObstacleEnvConfig(num_modes=num_modes)
    envs = make_env(env_cfg, n_envs=min(batch_size, n_episodes))
    env = envs[env_cfg.type][0]
    try:
        env_pre, env_post = make_env_pre_post_processors(env_cfg, policy.config)
        info = eval_policy(
            env,
            policy,
            env_pre,
            env_post,
            preprocessor,
            postprocessor,
            n_episodes=n_episodes,
            return_episode_data=True,
            start_seed=seed,
        )
    finally:
        env.close()
    trajectories = episode_trajectories(info["episodes"])
    layout = ObstacleLayout.preset(num_modes)
    modes = np.array([int(classify_trajectory(t[None], layout)[0]) for t in trajectories])
    successes = np.array([ep["success"] for ep in info["per_episode"]])
    return mode_statistics(modes, successes, num_modes), trajectories


def held_out_batch(
    config: PreTrainedConfig,
    preprocessor: PolicyProcessorPipeline,
    repo_id: str,
    root: str | Path | None,
    episodes: list[int],
    num_frames: int = 128,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Up to `num_frames` frames drawn at random (from `seed`) from the given (held-out) episodes of a dataset,
    read as training reads them (`config`'s observation history and chunk) and preprocessed."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata(repo_id, root=root)
    unknown = sorted(set(episodes) - set(range(meta.total_episodes)))
    if unknown:
        raise ValueError(f"Episodes {unknown} are not in {repo_id} ({meta.total_episodes} episodes).")
    dataset = LeRobotDataset(
        repo_id,
        root=root,
        episodes=episodes,
        delta_timestamps=resolve_delta_timestamps(config, meta),
        video_backend=video_backend(),
    )
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randperm(len(dataset), generator=generator)[:num_frames]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, frames.tolist()), batch_size=len(frames))
    return preprocessor(next(iter(loader)))


def held_out_chamfer(
    policy_path: str,
    teacher_path: str,
    repo_id: str,
    root: str | None,
    episodes: list[int],
    num_frames: int = 128,
    num_samples: int = 32,
    teacher_num_steps: int | None = None,
    teacher_solver: str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """`sample_chamfer` on up to `num_frames` frames of the given (held-out) episodes of any dataset.

    Both policies see the observation through the teacher's preprocessor, whose normalization the student
    shares, so the two Chamfer directions are in one action space.
    """
    from lerobot_flowstep.tools.checkpoints import load_checkpoint

    teacher, preprocessor, _ = load_checkpoint(teacher_path)
    policy, _, _ = load_checkpoint(policy_path)
    batch = held_out_batch(teacher.config, preprocessor, repo_id, root, episodes, num_frames, seed)
    kwargs = {}
    if teacher_num_steps is not None:
        kwargs["num_steps"] = teacher_num_steps
    if teacher_solver is not None:
        kwargs["solver"] = teacher_solver
    result = sample_chamfer(policy, teacher, batch, num_samples, seed, **kwargs)
    return {**result, "frames": batch["index"].shape[0], "samples_per_frame": num_samples}
