"""The one-step IMLE student policy."""

import dataclasses

import torch
from lerobot.utils.constants import ACTION
from torch import Tensor

from lerobot_flowstep.core.imle import imle_chamfer_objective, paired_distances, trajectory_distances
from lerobot_flowstep.core.networks import make_chunk_network
from lerobot_flowstep.policies.common.policy_base import FlowstepBasePolicy
from lerobot_flowstep.policies.common.rtc import PrefixGuidance, prefix_distance
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.policies.imle_student.configuration_imle_student import (
    ImleStudentConfig,
    check_teacher_compatibility,
    load_teacher_config,
)
from lerobot_flowstep.policies.imle_student.teacher_cache import (
    TeacherCache,
    check_cache_matches_dataset,
    check_perturbed_cache,
)


def sparsity(samples: Tensor) -> Tensor:
    """(B, L): each candidate's mean distance to its nearest quarter of the other candidates (B, L, H, A); low
    in a dense region. A rare sample between modes scores high; which mode scores low stays random (each
    mode's samples are dense around it)."""
    distances = trajectory_distances(samples, samples)  # (B, L, L), zero on the diagonal
    k = max(1, samples.shape[1] // 4)
    return distances.sort(dim=-1).values[..., 1 : k + 1].mean(dim=-1)


def plan_disagreement(samples: Tensor, previous: Tensor, shift: int) -> Tensor:
    """(B, L): how far each candidate is from what the previous chunk (B, H, A) planned for the same steps
    (the previous chunk shifted by the `shift` executed actions)."""
    overlap = samples.shape[2] - shift
    return ((samples[:, :, :overlap] - previous[:, None, shift:]) ** 2).mean(dim=(-1, -2))


def select_candidate(samples: Tensor, previous: Tensor | None, shift: int, rule: str = "consistency") -> Tensor:
    """Index (B,) of the candidate chunk to execute among samples (B, L, H, A), by `rule`:

    - "consistency": the candidate closest to the previous plan, as IMLE Policy does, so that re-planning does
      not switch modes;
    - "density": the densest candidate at every re-plan, whatever was planned before;
    - "consistent_density": the densest candidate among the quarter closest to the previous plan: the mode is
      kept as with "consistency", but within it the typical sample is executed, not the one that best copies a
      plan made from an older observation.

    Every rule takes the densest candidate for an episode's first chunk (no previous plan).
    """
    if previous is None or rule == "density":
        return sparsity(samples).argmin(dim=1)
    disagreement = plan_disagreement(samples, previous, shift)
    if rule == "consistency":
        return disagreement.argmin(dim=1)
    # Density among all candidates, so that it is measured against the whole set, not the few kept.
    closest = disagreement.topk(max(1, samples.shape[1] // 4), dim=1, largest=False).indices  # (B, L/4)
    return closest.gather(1, sparsity(samples).gather(1, closest).argmin(dim=1, keepdim=True)).squeeze(1)


def perturb_observations(batch: dict[str, Tensor], keys: list[str], std: float) -> dict[str, Tensor]:
    """A copy of `batch` whose `keys` (B, n_obs_steps, D) are offset by Gaussian noise of `std`, one offset per
    observation for its whole history, so that the motion within the history is kept."""
    perturbed = dict(batch)
    for key in keys:
        x = batch[key]
        perturbed[key] = x + std * torch.randn(x.shape[0], *([1] * (x.ndim - 2)), x.shape[-1], device=x.device)
    return perturbed


def observation_offsets(
    batch: dict[str, Tensor], keys: list[str], std: float, num: int, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """`num` Gaussian offsets of `std` per observation for each of `keys`: {key: (B, num, D)}, one offset per
    perturbed copy for its whole history (`offset_observations`)."""
    offsets = {}
    for key in keys:
        x = batch[key]
        shape = (x.shape[0], num, x.shape[-1])
        offsets[key] = std * torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    return offsets


def offset_observations(batch: dict[str, Tensor], offsets: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch of B observations as B x M perturbed copies, observation-major (copy j of observation i is row
    i * M + j): every per-observation tensor repeated M times, and each key of `offsets` ({key: (B, M, D)}) offset
    by its copy's offset at every step of its history (B, n_obs_steps, D)."""
    b, m = next(iter(offsets.values())).shape[:2]
    copies = {
        key: value.repeat_interleave(m, dim=0)
        if isinstance(value, Tensor) and value.ndim and len(value) == b
        else value
        for key, value in batch.items()
    }
    for key, offset in offsets.items():
        x = copies[key]
        copies[key] = x + offset.reshape(b * m, *([1] * (x.ndim - 2)), x.shape[-1]).to(x.dtype)
    return copies


class ImleStudentPolicy(FlowstepBasePolicy):
    """Action chunks in one forward pass: a = z + f(z, t=0 | obs), z ~ N(0, I).

    Trained by set-level IMLE: per observation, K student chunks from distinct latents are pulled onto M
    teacher chunks (and the dataset chunk) by a bi-directional Chamfer loss, so every mode of the teacher
    keeps a student sample. The frozen teacher is loaded only for training, is not a submodule, and is
    therefore neither optimized nor saved with the student.
    """

    config_class = ImleStudentConfig
    name = "imle_student"

    def __init__(self, config: ImleStudentConfig, **kwargs):
        super().__init__(config, **kwargs)
        network = dataclasses.replace(
            config.network, num_blocks=config.network.num_blocks + config.extra_generator_blocks
        )
        self.generator = make_chunk_network(network, config.horizon, config.action_dim, self.encoder.cond_dim)
        # Saved with the weights, so that resuming or fine-tuning never re-copies the teacher's weights.
        self.register_buffer("initialized_from_teacher", torch.tensor(False))
        self._teacher_holder: list[FlowstepTeacherPolicy] = []
        self._teacher_copy_checked = False
        self._caches: dict[str, TeacherCache] = {}
        if config.teacher_path:
            try:
                teacher_config = load_teacher_config(config.teacher_path)
            except FileNotFoundError:
                # A trained student is deployed without its teacher; training will say so if it is needed.
                teacher_config = None
            if teacher_config is not None:
                check_teacher_compatibility(config, teacher_config)
        # `make_policy` passes the dataset it trains on (lerobot-train, resumed runs included): a cache drawn on
        # another dataset would give every frame another frame's samples, so it is refused before training.
        dataset_meta = kwargs.get("dataset_meta")
        if dataset_meta is not None:
            for path in (config.teacher_cache_path, config.perturbed_cache_path):
                if path:
                    check_cache_matches_dataset(path, dataset_meta)

    # --- the teacher, loaded on first use -------------------------------------------------------

    @property
    def teacher(self) -> FlowstepTeacherPolicy:
        device = self.initialized_from_teacher.device
        if not self._teacher_holder:
            if not self.config.teacher_path:
                raise ValueError(
                    "The IMLE student distils a teacher: set --policy.teacher_path=<teacher checkpoint folder or "
                    "repo id> (or train --policy.type=flowstep_regression, the teacher-free baseline)."
                )
            # Reading config.json first reports a teacher folder that moved since the student was configured (a
            # resumed run) by name, not by the Hub client's repo-id validation.
            teacher_config = load_teacher_config(self.config.teacher_path)
            check_teacher_compatibility(self.config, teacher_config)
            teacher = FlowstepTeacherPolicy.from_pretrained(self.config.teacher_path, config=teacher_config)
            teacher.requires_grad_(False)
            self._teacher_holder.append(teacher.eval().to(device))
        teacher = self._teacher_holder[0]
        if next(teacher.parameters()).device != device:
            teacher.to(device)  # the student moved since the teacher was loaded
        return teacher

    @property
    def teacher_cache(self) -> TeacherCache | None:
        """The cache, on the student's device: looked up there, so a training step copies nothing to the host."""
        return self._cache(self.config.teacher_cache_path)

    @property
    def perturbed_cache(self) -> TeacherCache | None:
        """The perturbed cache (`perturbed_cache_path`), on the student's device, checked once against the
        observation noise and inputs the student is configured with."""
        path = self.config.perturbed_cache_path
        first = path and path not in self._caches
        cache = self._cache(path)
        if first:
            check_perturbed_cache(cache, self.config.observation_noise_std, self.encoder.vector_keys)
        return cache

    def _cache(self, path: str | None) -> TeacherCache | None:
        if not path:
            return None
        if path not in self._caches:
            self._caches[path] = TeacherCache(path)
        cache = self._caches[path]
        device = self.initialized_from_teacher.device
        if cache.device != device:
            cache.to(device)
        return cache

    def initialize_from_teacher(self) -> None:
        """Copy the teacher's encoder and velocity network: the student starts as one-step Euler CFM."""
        self.encoder.load_state_dict(self.teacher.encoder.state_dict())
        extra = self.config.extra_generator_blocks
        missing, unexpected = self.generator.load_state_dict(self.teacher.velocity.state_dict(), strict=not extra)
        if extra:
            first = len(self.generator.blocks) - extra
            added = self.generator.blocks[first:]
            own = {f"blocks.{first + i}.{k}" for i, block in enumerate(added) for k in block.state_dict()}
            if unexpected or set(missing) != own:
                raise RuntimeError(f"Teacher weights do not fit the student's generator: {unexpected or missing}.")
            with torch.no_grad():
                for block in added:  # residual blocks whose output is zero: the identity
                    block.mlp[-1].weight.zero_()
                    block.mlp[-1].bias.zero_()
        self.initialized_from_teacher.fill_(True)

    # --- generation -----------------------------------------------------------------------------

    def generate(self, cond: Tensor, noise: Tensor) -> Tensor:
        # A float time: at inference the network embeds t = 0 once per set of weights, not at every chunk.
        return noise + self.generator(noise, 0.0, cond)

    def _chunk_from_cond(
        self, cond: Tensor, noise: Tensor | None = None, guidance: PrefixGuidance | None = None
    ) -> Tensor:
        candidates = self.config.num_inference_candidates
        if guidance is None and (candidates == 1 or noise is not None):
            return super()._chunk_from_cond(cond, noise)
        samples = self.sample({}, num_samples=candidates, cond=cond)  # (B, L, H, A), one batched forward pass
        if guidance is not None and guidance.execution_horizon > 0:
            best = prefix_distance(samples, guidance).argmin(dim=1)
        else:
            previous = self._last_chunk
            if previous is not None and previous.shape[0] != cond.shape[0]:
                # A chunk planned for a batch of another size (a direct call after a rollout) is no plan for this.
                previous = None
            best = select_candidate(samples, previous, self.config.n_action_steps, self.config.candidate_selection)
        chunk = samples[torch.arange(samples.shape[0], device=samples.device), best]
        self._last_chunk = chunk
        return chunk

    # --- real-time chunking (LeRobot's RTC engine) ----------------------------------------------

    def supports_rtc(self) -> bool:
        """A one-step map has no denoising steps to guide: RTC here chooses, among the candidates drawn in one
        pass, the one that best continues the left-over prefix. One candidate leaves nothing to choose, so
        lerobot-rollout then refuses `--inference.type=rtc` with its own error."""
        return self.config.num_inference_candidates > 1

    def check_prefix_call(self, noise: Tensor | None) -> None:
        """Following a left-over here means choosing among several candidates, the one nearest it under LeRobot's
        RTC prefix weights (`prefix_distance`: 1 over the `inference_delay` actions, decaying to 0 at
        `execution_horizon`), instead of `candidate_selection`'s choice; the candidates cost what they cost
        without RTC. A fixed `noise`, or a single candidate, leaves nothing to choose."""
        if noise is not None or not self.supports_rtc():
            raise ValueError(
                f"{self.name}: following prev_chunk_left_over means choosing among several candidate chunks, but "
                + (
                    "`noise` fixes a single one; call without it."
                    if noise is not None
                    else "num_inference_candidates is 1; set --policy.num_inference_candidates=16 (the default)."
                )
            )

    # --- training -------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        actions = batch[ACTION]
        mask = ~batch["action_is_pad"] if "action_is_pad" in batch else None
        if self.config.init_from_teacher and self.training and not self._teacher_copy_checked:
            # The buffer is read once per process (a device sync), not at every step: it only changes here.
            if not bool(self.initialized_from_teacher):
                self.initialize_from_teacher()
            self._teacher_copy_checked = True
        paired = self.config.paired_weight > 0
        teacher_samples, latents, missing = self.teacher_targets(batch, with_latents=paired)
        targets = teacher_samples
        if self.config.include_dataset_action:
            targets = torch.cat([targets, actions[:, None].to(targets.dtype)], dim=1)

        cond = self.encode(batch)
        b = cond.shape[0]
        c, k = self.config.num_candidate_sets, self.config.num_student_samples
        if paired:
            # The teacher's latents, which are themselves independent draws, so the set terms still apply.
            noise = latents.flatten(0, 1).to(cond.dtype)
        else:
            # One independent latent per candidate sample: distinct latents are what spread the samples.
            noise = self.sample_noise(b * c * k, cond.device).to(cond.dtype)
        candidates = self.generate(cond.repeat_interleave(c * k, dim=0), noise)
        candidates = candidates.reshape(b, c, k, self.config.horizon, -1)
        loss, stats = imle_chamfer_objective(
            targets,
            candidates,
            mask,
            self.config.coverage_weight,
            self.config.fidelity_weight,
            self.config.energy_weight,
        )
        if paired:
            paired_loss = paired_distances(teacher_samples, candidates[:, 0], mask).mean()
            loss = loss + self.config.paired_weight * paired_loss
            stats["paired_loss"] = paired_loss.detach()
        if self.config.observation_noise_std > 0:
            perturbed_loss, perturbed_missing = self.perturbed_paired_loss(batch, mask)
            loss = loss + self.config.paired_weight * perturbed_loss
            stats["perturbed_paired_loss"] = perturbed_loss.detach()
            if perturbed_missing is not None:
                missing = perturbed_missing if missing is None else missing | perturbed_missing
        if missing is None:
            return loss, self.training_info(stats, batch)
        # The caches' missing-frame count rides on the same host readback as the logged values.
        info = self.training_info({**stats, "uncached_frames": missing.sum()}, batch)
        if info.pop("uncached_frames"):
            raise self.missing_frames_error(batch["index"])
        return loss, info

    def missing_frames_error(self, index: Tensor) -> KeyError:
        """The error for a batch with frames a cache lacks, from the first cache that lacks one."""
        for cache in (self.teacher_cache, self.perturbed_cache):
            if cache is not None and bool(cache.lookup(index)[1].any()):
                return cache.missing_frames_error(index)
        raise AssertionError("missing_frames_error called for a batch every cache holds")

    def perturbed_paired_loss(self, batch: dict[str, Tensor], mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The paired error at observations the dataset lacks: the batch's state-like observations perturbed
        (`perturb_observations`), labelled by the teacher online, from fresh latents; or, with a perturbed cache,
        the cache's perturbed copies of the batch's frames, labelled when the cache was drawn. Also which frames
        the perturbed cache lacks (B,), None online."""
        if self.config.perturbed_cache_path:
            return self.cached_perturbed_paired_loss(batch, mask)
        keys = self.encoder.vector_keys
        if not keys:
            raise ValueError(
                f"observation_noise_std={self.config.observation_noise_std} perturbs state-like observations "
                f"(observation.state, observation.environment_state); this policy's inputs "
                f"{self.encoder.input_keys} have none."
            )
        perturbed = perturb_observations(batch, keys, self.config.observation_noise_std)
        solver = {"num_steps": self.config.teacher_num_inference_steps, "solver": self.config.teacher_ode_solver}
        targets, latents = self.teacher.sample_pairs(perturbed, self.config.num_perturbed_samples, **solver)
        cond = self.encode(perturbed).repeat_interleave(self.config.num_perturbed_samples, dim=0)
        chunks = self.generate(cond, latents.flatten(0, 1).to(cond.dtype)).reshape(targets.shape)
        return paired_distances(targets, chunks, mask).mean(), None

    def cached_perturbed_paired_loss(self, batch: dict[str, Tensor], mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """`perturbed_paired_loss` from the perturbed cache: num_perturbed_samples of each frame's perturbed
        copies, each its own observation (the frame's offset by the copy's offset) with the latent the teacher
        started from; and which frames the cache lacks (their rows hold another frame's copies)."""
        cache, num = self.perturbed_cache, self.config.num_perturbed_samples
        cache.check_batch(batch, num, "perturbed_cache_path", "num_perturbed_samples")
        targets, latents, offsets, missing = cache.lookup_perturbed(batch["index"], num)
        cond = self.encode(offset_observations(batch, offsets))
        chunks = self.generate(cond, latents.flatten(0, 1).to(cond.dtype)).reshape(targets.shape)
        return paired_distances(targets, chunks, mask).mean(), missing

    @torch.no_grad()
    def teacher_targets(
        self, batch: dict[str, Tensor], with_latents: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """M teacher chunks per observation (B, M, H, A); with `with_latents` the latent each was drawn from
        (B, M, H, A), else None; and from the cache also which rows it lacks (B,) (their chunks are
        placeholders), else None. From the cache when configured, else sampled."""
        cache = self.teacher_cache
        if cache is not None:
            m = self.config.num_teacher_samples
            cache.check_batch(batch, m, "teacher_cache_path", "num_teacher_samples")
            if with_latents:
                return cache.lookup_pairs(batch["index"], m)
            samples, missing = cache.lookup(batch["index"], m)
            return samples, None, missing
        solver = {"num_steps": self.config.teacher_num_inference_steps, "solver": self.config.teacher_ode_solver}
        samples, latents = self.teacher.sample_pairs(batch, self.config.num_teacher_samples, **solver)
        return samples, latents if with_latents else None, None
