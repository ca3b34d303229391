"""What the flowstep policies share: observation history, receding-horizon action queues, the encoder,
batched multi-sample generation and a checkpoint-compatibility check.

A policy subclass implements `generate(cond, noise)` (one chunk per row, normalized action space) and
`forward(batch)` (its training loss); it may override `_chunk_from_cond` to choose among several samples.

In a rollout (`select_action`) each observation frame goes through the encoder once: its per-frame features
are kept in a history of `n_obs_steps` entries and only the fusion of that history runs again at a re-plan.
"""

from __future__ import annotations

import abc
import json
import math
from collections import deque
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION, POLICY_PREPROCESSOR_DEFAULT_NAME
from safetensors import SafetensorError, safe_open
from torch import Tensor

from lerobot_flowstep.constants import OBS_POINTCLOUD
from lerobot_flowstep.core.encoder import UnifiedObservationEncoder
from lerobot_flowstep.policies.common.config_base import FlowstepBaseConfig
from lerobot_flowstep.policies.common.rtc import follows_prefix, policy_prefix_guidance, rtc_processor_from_config
from lerobot_flowstep.processor.pointcloud import REGISTRY_NAME as POINTCLOUD_REGISTRY_NAME
from lerobot_flowstep.processor.pointcloud import PointCloudConfig

# A point this far (metres) from the world origin is no part of any robot's scene: an overflowing depth reading.
EXTREME_COORDINATE = 1e4

if TYPE_CHECKING:
    from huggingface_hub import ModelCard
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata


class FlowstepBasePolicy(PreTrainedPolicy):
    config_class = FlowstepBaseConfig
    name = "flowstep_base"

    def __init__(self, config: FlowstepBaseConfig, **kwargs):
        super().__init__(config)
        if kwargs.get("dataset_meta") is not None:  # what make_policy (lerobot-train) passes
            check_dataset_timing(kwargs["dataset_meta"])
        config.validate_features()
        self.config = config
        self.encoder = UnifiedObservationEncoder(config.encoder, config.input_features, config.n_obs_steps)
        self._queues: dict[str, deque] = {}
        # Per-frame encoder features (B, step_dim), oldest first; a frame no re-plan will see yet is kept raw
        # (its observation dict) and encoded only if a re-plan comes before it leaves the history.
        self._frame_features: deque[Tensor | dict[str, Tensor]] = deque()
        self._last_chunk: Tensor | None = None
        self._training_steps = 0
        self.rtc_processor = None
        self.init_rtc_processor()
        self.reset()

    def get_optim_params(self):
        # The teacher a student distils is held outside the module tree, so every parameter here is trained.
        return self.parameters()

    # --- observation handling -------------------------------------------------------------------

    def reset(self) -> None:
        """Clear the observation history and the queued actions; call on env.reset()."""
        self._queues = {ACTION: deque(maxlen=self.config.n_action_steps)}
        self._frame_features = deque(maxlen=self.config.n_obs_steps)
        self._last_chunk = None

    def _observation_history(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """(B, n_obs_steps, ...) tensors for the encoder, from the batch alone: a dataloader batch (and what
        select_action builds from its queues) already has the time dimension; a single observation is
        repeated. The queues are never read here, so a training step after a rollout cannot see them."""
        keys = self.encoder.input_keys
        history = {}
        for k in keys:
            x = batch[k]
            expected = len(self.config.input_features[k].shape) + 2
            history[k] = (
                x.unsqueeze(1).expand(x.shape[0], self.config.n_obs_steps, *x.shape[1:])
                if (x.ndim == expected - 1)
                else x
            )
        return history

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, cond_dim) from a batch with the time dimension (B, n_obs_steps, ...) or a single frame."""
        self.encoder.check_keys(batch)
        self.check_observation_shapes(batch)
        return self.encoder(self._observation_history(batch))

    def training_info(self, stats: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, float]:
        """The values a training step logs, as floats (what LeRobot's metrics take), read back from the device
        in one transfer, the step's only synchronisation; the first is the loss, checked by `check_loss`."""
        values = torch.stack([value.detach().float().reshape(()) for value in stats.values()]).tolist()
        info = dict(zip(stats, values, strict=True))
        self.check_loss(values[0], batch)
        return info

    def check_loss(self, loss_value: float, batch: dict[str, Tensor]) -> None:
        """Count a training forward call and stop at a non-finite loss (`config.stop_on_nonfinite_loss`), naming
        the call and the batch keys holding NaN or inf. `loss_value` is the float already read back for
        logging, so the check adds no device synchronisation; the keys are inspected only on failure. Under
        data-parallel training only the process that saw the bad batch raises; the others stop at their next
        collective."""
        self._training_steps += 1
        if math.isfinite(loss_value) or not self.config.stop_on_nonfinite_loss:
            return
        bad = [
            key
            for key, value in batch.items()
            if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
        ]
        cause = f"batch keys holding NaN or inf: {bad}" if bad else "no batch key holds NaN or inf (the model diverged)"
        raise FloatingPointError(
            f"{self.name}: the training loss is {loss_value} at training forward call {self._training_steps} of "
            f"this process; {cause}. "
            "Training stops here, before a NaN checkpoint is written. Check the dataset (its stats.json), or "
            "lower the learning rate; --policy.stop_on_nonfinite_loss=false trains on regardless."
        )

    # --- generation -----------------------------------------------------------------------------

    @abc.abstractmethod
    def generate(self, cond: Tensor, noise: Tensor) -> Tensor:
        """Chunks (N, horizon, action_dim) in normalized action space from conditions (N, C) and noise."""

    def sample_noise(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        shape = (n, self.config.horizon, self.config.action_dim)
        return torch.randn(shape, device=device, generator=generator)

    def inference_noise(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """The latents of sampled chunks: unit noise scaled by `config.inference_noise_scale`."""
        noise = self.sample_noise(n, device, generator)
        scale = self.config.inference_noise_scale
        return noise if scale == 1.0 else noise.mul_(scale)

    @torch.no_grad()
    def sample(
        self,
        batch: dict[str, Tensor],
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        cond: Tensor | None = None,
        noise: Tensor | None = None,
        **generate_kwargs,
    ) -> Tensor:
        """`num_samples` chunks per observation in one batched call: (B, num_samples, horizon, action_dim),
        in normalized action space. The observation is encoded once and shared by its samples;
        `generate_kwargs` go to `generate` (e.g. the teacher's `num_steps` and `solver`). `noise`: the latents
        (B * num_samples, horizon, action_dim), observation-major, when the caller keeps them (a teacher
        cache for paired distillation); else drawn by `inference_noise`."""
        if cond is None:
            cond = self.encode(batch)
        b = cond.shape[0]
        cond = cond.repeat_interleave(num_samples, dim=0)
        if noise is None:
            noise = self.inference_noise(b * num_samples, cond.device, generator)
        noise = noise.to(cond.dtype)
        return self.generate(cond, noise, **generate_kwargs).reshape(b, num_samples, self.config.horizon, -1)

    @torch.no_grad()
    def sample_pairs(
        self,
        batch: dict[str, Tensor],
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        **generate_kwargs,
    ) -> tuple[Tensor, Tensor]:
        """`sample`, and the latent each chunk was generated from, shaped like the chunks: what a teacher cache
        keeps for paired distillation."""
        cond = self.encode(batch)
        noise = self.inference_noise(cond.shape[0] * num_samples, cond.device, generator)
        samples = self.sample(batch, num_samples, cond=cond, noise=noise, **generate_kwargs)
        return samples, noise.reshape(samples.shape)

    def _chunk_from_cond(self, cond: Tensor, noise: Tensor | None = None, **generate_kwargs) -> Tensor:
        """The chunk to execute (B, horizon, action_dim) for encoded observations (B, cond_dim); both
        `predict_action_chunk` and `select_action` end here, so the chunk does not depend on which was
        called. It is remembered as `_last_chunk`, which a subclass may use to keep re-plans consistent.
        `generate_kwargs` go to `generate` (the teacher's RTC guidance)."""
        if noise is None:
            noise = self.inference_noise(cond.shape[0], cond.device).to(cond.dtype)
        chunk = self.generate(cond, noise, **generate_kwargs)
        self._last_chunk = chunk
        return chunk

    @torch.no_grad()
    def predict_horizon(self, batch: dict[str, Tensor], noise: Tensor | None = None) -> Tensor:
        """The whole predicted horizon (B, horizon, action_dim), starting at the oldest observation's step, as the
        policy is trained on it: for diagnostics and comparisons against dataset chunks. Same inputs, and the
        same effect on `_last_chunk`, as `predict_action_chunk`; returned on the host, checked there."""
        return self._host_actions(self._chunk_from_cond(self.encode(batch), noise), batch)

    @torch.no_grad()
    def predict_action_chunk(
        self,
        batch: dict[str, Tensor],
        noise: Tensor | None = None,
        inference_delay: int | None = None,
        prev_chunk_left_over: Tensor | None = None,
        execution_horizon: int | None = None,
    ) -> Tensor:
        """The actions still to come, from the newest observation's step on: (B, horizon - n_obs_steps + 1,
        action_dim). This is what LeRobot's callers of this method (the async policy server, lerobot-rollout's
        RTC engine) take a chunk to be: its first action is the one to execute now. `select_action` executes the
        first `n_action_steps` of the same slice; how many to execute here is the caller's choice.

        `batch` has the time dimension (B, n_obs_steps, ...) or is a single frame, which then stands for its own
        history. Like a re-plan in `select_action` it updates `_last_chunk`, but it neither reads nor changes the
        rollout's frame history. The chunk is returned on the host, read back there once and checked
        (`_host_actions`).

        Real-time chunking (LeRobot's RTC engine): given `prev_chunk_left_over` (normalized, index 0 due now) and
        RTC not disabled (`config.rtc_config.enabled`), the chunk continues the left-over over `inference_delay`
        actions and blends into it up to `execution_horizon`; how is the policy's own (`_chunk_from_cond`'s
        `guidance`, see `policies/common/rtc.py`). A policy that cannot follow one refuses it
        (`check_prefix_call`). Without a left-over it is the plain chunk, at the plain cost."""
        cond = self.encode(batch)
        if follows_prefix(getattr(self.config, "rtc_config", None), prev_chunk_left_over):
            self.check_prefix_call(noise)
            guidance = policy_prefix_guidance(self, cond, prev_chunk_left_over, inference_delay, execution_horizon)
            chunk = self._chunk_from_cond(cond, noise, guidance=guidance)
        else:
            chunk = self._chunk_from_cond(cond, noise)
        return self._host_actions(chunk[:, self.config.n_obs_steps - 1 :], batch)

    def init_rtc_processor(self) -> None:
        """Called by lerobot-rollout after it sets `config.rtc_config` from `--inference.rtc.*` (as for pi0)."""
        self.rtc_processor = rtc_processor_from_config(getattr(self.config, "rtc_config", None))

    def check_prefix_call(self, noise: Tensor | None) -> None:
        """Refuse a `predict_action_chunk` call with a left-over this policy cannot follow."""
        if not self.supports_rtc():
            raise ValueError(
                f"{self.name} does not follow prev_chunk_left_over (real-time chunking): call predict_action_chunk "
                "without it, or serve a flowstep_teacher or imle_student."
            )

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], noise: Tensor | None = None) -> Tensor:
        """One action per env for one observation frame (B, ...); re-plans once the `n_action_steps` queued
        actions are spent, conditioned on the last `n_obs_steps` frames. The actions are queued on the host: a
        re-plan reads the executed part of its chunk back once and checks it there (`_host_actions`), and the
        other steps hand out host tensors, which the caller's `.cpu()` then does not wait for."""
        n_obs = self.config.n_obs_steps
        queued = len(self._queues[ACTION])
        # Now, not when a frame kept raw is encoded a few steps later.
        self.encoder.check_keys(batch)
        self.check_observation_shapes(batch, frame=True)
        frame = {k: batch[k] for k in self.encoder.input_keys}
        history = self._frame_features
        if not history:
            # As LeRobot's populate_queues does, the first frame of an episode stands for the whole history.
            history.extend([self.encoder.encode_frames(frame)] * n_obs)
        elif queued < n_obs:
            # The re-plan comes when the queue is empty, so this frame is among the last n_obs before it:
            # encoding it now spreads the encoder's cost over the control steps.
            history.append(self.encoder.encode_frames(frame))
        else:
            # Out of the history again before the next re-plan: usually never encoded at all.
            history.append(frame)
        if queued == 0:
            steps = self._encoded_history()  # (B, n_obs_steps, step_dim)
            chunk = self._chunk_from_cond(self.encoder.fuse_steps(steps), noise)
            start = n_obs - 1
            executed = self._host_actions(chunk[:, start : start + self.config.n_action_steps], frame)
            self._queues[ACTION].extend(executed.transpose(0, 1))
        return self._queues[ACTION].popleft()

    def _host_actions(self, actions: Tensor, observation: dict[str, Tensor]) -> Tensor:
        """`actions` read back to the host, and refused there if any is NaN or inf: on a robot a NaN must stop
        the run, not move the arm. Every caller reads the actions back to use them; doing it here, once per
        chunk, lets the check ride on that readback, with no other synchronisation. The cause is looked for
        only after a failure."""
        host = actions.cpu()
        if not bool(torch.isfinite(host).all()):
            raise FloatingPointError(
                f"{self.name}: the policy produced NaN or inf actions, which are not sent on. "
                + self.nonfinite_cause(observation)
            )
        return host

    def nonfinite_cause(self, observation: dict[str, Tensor]) -> str:
        """What made non-finite actions, as far as it can be told: non-finite weights, non-finite observation keys
        (or encoded features of an earlier frame of the history), or extreme values (a point cloud reaching far
        outside any workspace)."""
        weights = nonfinite_tensors(dict(self.named_parameters()) | dict(self.named_buffers()))
        if weights:
            return f"Cause: the weights hold NaN or inf in {describe_counts(weights)}; reload a sound checkpoint."
        inputs = {k: v for k, v in observation.items() if isinstance(v, Tensor) and v.is_floating_point()}
        bad = [k for k, v in inputs.items() if not bool(torch.isfinite(v).all())]
        if bad:
            return f"Cause: observation keys holding NaN or inf: {bad}."
        largest = {k: float(v.abs().max()) for k, v in inputs.items() if v.numel()}
        cloud = largest.get(OBS_POINTCLOUD)
        if cloud is not None and cloud > EXTREME_COORDINATE:
            return (
                f"Cause: '{OBS_POINTCLOUD}' holds a coordinate of {cloud:.3g} m (a depth reading far beyond the "
                "scene): the network overflows on it. Set pointcloud.bounds_low and bounds_high to the workspace "
                "(then such points are dropped)."
            )
        history = [
            i for i, f in enumerate(self._frame_features) if isinstance(f, Tensor) and not bool(f.isfinite().all())
        ]
        if history:
            return (
                f"Cause: the encoded features of history frames {history} (0 = oldest) hold NaN or inf: an "
                "observation of this episode was non-finite or extreme."
            )
        top = dict(sorted(largest.items(), key=lambda item: -item[1])[:3])
        return (
            "No weight and no observation value is NaN or inf: the network overflowed. Largest absolute input "
            f"values: { {k: f'{v:.3g}' for k, v in top.items()} }."
        )

    def check_observation_shapes(self, batch: dict[str, Tensor], frame: bool = False) -> None:
        """Raise, naming the key, when an observation's shape differs from the one the policy was trained on (an
        image rendered at another size), instead of a reshape error deep in the encoder. Shapes only: no
        synchronisation. `frame`: the batch is one frame (B, ...), else it may also have the time dimension."""
        for key in self.encoder.input_keys:
            expected = tuple(self.config.input_features[key].shape)
            got = tuple(batch[key].shape)
            lead = got[: len(got) - len(expected)]
            if got[len(lead) :] != expected or not 1 <= len(lead) <= (1 if frame else 2):
                raise ValueError(
                    f"'{key}' has shape {got}, but this policy was trained on {expected} per frame (batch first"
                    + ("" if frame else ", then optionally the history")
                    + "). Give observations as in training: same image size, cameras and point count."
                )

    def _encoded_history(self) -> Tensor:
        """The history's features stacked oldest first, encoding in one call any frame still kept raw: that
        happens only when a re-plan comes early (the action queue emptied from outside)."""
        history = self._frame_features
        raw = [i for i, entry in enumerate(history) if not isinstance(entry, Tensor)]
        if raw:
            frames = [history[i] for i in raw]
            joined = {k: torch.cat([f[k] for f in frames], dim=0) for k in frames[0]}
            features = self.encoder.encode_frames(joined).split(frames[0][self.encoder.input_keys[0]].shape[0])
            for i, f in zip(raw, features, strict=True):
                history[i] = f
        return torch.stack(list(history), dim=1)

    # --- checkpoints ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path, *, config: FlowstepBaseConfig | None = None, **kwargs):
        if config is None:
            config = FlowstepBaseConfig.from_pretrained(pretrained_name_or_path, **_hub_kwargs(kwargs))
        # The trained weights are in model.safetensors: a local pretrained-backbone file named in the saved
        # config is not needed (and rarely exists) on the machine that loads the checkpoint.
        config.encoder.pretrained_backbone_path = None
        check_saved_pointcloud_step(pretrained_name_or_path, config)
        return super().from_pretrained(pretrained_name_or_path, config=config, **kwargs)

    @classmethod
    def _load_as_safetensor(cls, model, model_file: str, map_location: str, strict: bool):
        try:
            check_checkpoint_shapes(model, model_file)
            model = super()._load_as_safetensor(model, model_file, map_location, strict)
        except SafetensorError as err:
            raise ValueError(
                f"Cannot read the weights file {model_file}: {err}. It is truncated or corrupt (an interrupted "
                "copy or download?); copy the checkpoint folder again."
            ) from err
        weights = nonfinite_tensors(model.state_dict())
        if weights:
            raise ValueError(
                f"The weights file {model_file} holds NaN or inf in {describe_counts(weights)}. The file is damaged "
                "(flipped bits in a copy?) or was saved by a diverged run; copy it again or take an earlier checkpoint."
            )
        return model

    # --- Hub ------------------------------------------------------------------------------------

    def generate_model_card(
        self,
        dataset_repo_id: str,
        model_type: str,
        license: str | None,
        tags: list[str] | None,
        cfg: TrainPipelineConfig | None = None,
        dataset_meta: LeRobotDatasetMetadata | None = None,
    ) -> ModelCard:
        """The card `lerobot-train --policy.push_to_hub=true` uploads: the plugin's template (hub_cards/), which
        describes the method, the teacher reference and the limitations, instead of LeRobot's generic one."""
        from lerobot_flowstep.hub.cards import render_policy_card  # only pushing needs the card code (and Jinja2)

        return render_policy_card(
            self.config,
            repo_id=self.config.repo_id,
            train=cfg,
            dataset_meta=dataset_meta,
            dataset_repo_id=dataset_repo_id,
            num_parameters=sum(t.numel() for t in self.state_dict().values()),
        )


def check_dataset_timing(meta: LeRobotDatasetMetadata) -> None:
    """Refuse a `meta/info.json` whose `fps` or `total_frames` contradicts the data, naming both values.

    The policy's history and chunk are counted in frames and turned into the dataset's `delta_timestamps` with
    `fps`; LeRobot's loader trusts info.json, so a hand-edited value would train silently on other offsets or
    frames. Checked here, where `make_policy` (and so lerobot-train) hands the metadata over: `total_frames`
    against the episode lengths, `fps` against the timestamps of the first episode of two frames or more."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    info = Path(meta.root) / "meta" / "info.json"
    episodes = meta.episodes
    if episodes is None or len(episodes) == 0:
        return
    lengths = [int(n) for n in episodes["length"]]
    if sum(lengths) != meta.total_frames:
        raise ValueError(
            f"{info} says total_frames={meta.total_frames}, but its {len(lengths)} episodes hold {sum(lengths)} "
            "frames (meta/episodes). Was info.json edited? Set total_frames to the episodes' sum."
        )
    episode = next((i for i, n in enumerate(lengths) if n >= 2), None)
    if episode is None:
        return
    index = int(episodes[episode]["episode_index"])
    table = pq.read_table(Path(meta.root) / meta.get_data_file_path(episode), columns=["timestamp", "episode_index"])
    timestamps = table.filter(pc.equal(table["episode_index"], index))["timestamp"].to_numpy()
    if len(timestamps) < 2:
        return
    period = float(np.median(np.diff(timestamps)))
    if not period > 0 or abs(period * meta.fps - 1.0) > 1e-3:
        raise ValueError(
            f"{info} says fps={meta.fps}, but episode {index} has a frame every {period:.6g} s "
            f"({1 / period if period > 0 else float('inf'):.6g} fps). Was info.json edited? The policy's history and "
            "chunk offsets are computed from fps: set it to the rate the data was recorded at."
        )


def check_saved_pointcloud_step(pretrained: str | Path, config: FlowstepBaseConfig) -> None:
    """Refuse point-cloud settings that differ from the checkpoint's saved preprocessor.

    At evaluation LeRobot rebuilds the preprocessor from `policy_preprocessor.json`, so a
    `--policy.pointcloud.*` override would be printed with the config but never applied. Raising names the
    fields instead; only local checkpoint folders are checked (a Hub checkpoint's files are read later)."""
    path = Path(pretrained) / f"{POLICY_PREPROCESSOR_DEFAULT_NAME}.json"
    if not path.is_file():
        return
    steps = json.loads(path.read_text()).get("steps", [])
    saved = next((s.get("config", {}) for s in steps if s.get("registry_name") == POINTCLOUD_REGISTRY_NAME), None)
    wanted = asdict(config.pointcloud)
    if saved is None:
        if config.pointcloud.enabled:
            raise ValueError(
                f"{path} has no point-cloud step, but the policy config asks for one ({wanted}); evaluation would "
                "run without it. Drop the --policy.pointcloud.* overrides."
            )
        return
    known = {f.name for f in fields(PointCloudConfig)}
    saved_config = asdict(PointCloudConfig(**{k: v for k, v in saved.items() if k in known}))
    differing = {k: (saved_config[k], wanted[k]) for k in known if saved_config[k] != wanted[k]}
    if differing:
        details = ", ".join(f"{k}: saved {old!r}, requested {new!r}" for k, (old, new) in differing.items())
        raise ValueError(
            f"The point-cloud settings differ from the checkpoint's saved preprocessor ({details}). The saved "
            f"step ({path}) is what runs at evaluation, so these overrides would not apply: drop them, or change "
            "the same fields in both that file and config.json (a cloud made unlike training's is out of "
            "distribution)."
        )


def _hub_kwargs(kwargs: dict) -> dict:
    names = ("force_download", "resume_download", "proxies", "token", "cache_dir", "local_files_only", "revision")
    return {k: kwargs[k] for k in names if k in kwargs}


def nonfinite_tensors(tensors: dict[str, Tensor]) -> dict[str, tuple[int, int]]:
    """{name: (non-finite count, size)} of the floating-point tensors holding NaN or inf, read back in one transfer."""
    floats = {k: v for k, v in tensors.items() if v.is_floating_point() and v.numel()}
    if not floats:
        return {}
    device = next(iter(floats.values())).device
    counts = torch.stack([(~torch.isfinite(v)).sum().to(device) for v in floats.values()]).tolist()
    return {k: (count, floats[k].numel()) for k, count in zip(floats, counts, strict=True) if count}


def describe_counts(bad: dict[str, tuple[int, int]], limit: int = 8) -> str:
    named = ", ".join(f"'{k}' ({count} of {size} values)" for k, (count, size) in list(bad.items())[:limit])
    return f"{len(bad)} tensors: {named}" + (", ..." if len(bad) > limit else "")


def check_checkpoint_shapes(model: torch.nn.Module, model_file: str) -> None:
    """Name the features at fault when a checkpoint does not fit the policy built from the current data,
    instead of letting torch report a bare size mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatched = []
    with safe_open(model_file, framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            shape = tuple(f.get_slice(key).get_shape())
            if key in expected and expected[key] != shape:
                mismatched.append(f"{key}: checkpoint {shape} vs policy {expected[key]}")
    if mismatched:
        cfg = model.config
        raise ValueError(
            f"The checkpoint {model_file} does not fit a policy built for action '{ACTION}' of shape "
            f"{cfg.action_feature.shape if cfg.action_feature else None}, horizon {cfg.horizon} and inputs "
            f"{ {k: tuple(v.shape) for k, v in cfg.input_features.items()} }. Was it trained on data with "
            "another action dimension or other observation features? Mismatched weights:\n  "
            + "\n  ".join(mismatched[:10])
        )
