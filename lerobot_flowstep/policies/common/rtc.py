"""Real-time chunking (RTC): the contract of lerobot-rollout's RTC engine, for the flowstep policies.

The engine (`lerobot.rollout.inference.rtc`) runs inference in a background thread while the robot executes the
queued chunk. Each call gets `prev_chunk_left_over`, the actions of the previous chunk not yet executed when the
observation was taken (normalized, index 0 = the action due now), and `inference_delay`, how many of them the
robot executes before the new chunk arrives; the engine then drops that many actions of the new chunk. The new
chunk should therefore continue the left-over prefix: its first `inference_delay` actions copy it (they are never
executed) and the next ones blend into it up to `execution_horizon`.

The teacher follows the prefix with LeRobot's own guidance (`RTCProcessor.denoise_step`, as pi0 does), wrapped
for this plugin's conventions by `PrefixGuidance`; the one-step student picks, among its candidates, the one
nearest the prefix under the same weights (`prefix_distance`). The chunk these policies predict starts at the
oldest observation, `offset` = n_obs_steps - 1 steps before the newest: the prefix lines up from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.policies.rtc import RTCConfig, RTCProcessor
from torch import Tensor

VelocityFn = Callable[[Tensor, float], Tensor]


@dataclass
class PrefixGuidance:
    """The left-over prefix a new chunk must continue, checked and laid out for one `predict_action_chunk` call.

    prefix: (B, T, A) normalized actions, T <= the executed chunk's length, index 0 at horizon position `offset`.
    """

    processor: RTCProcessor
    prefix: Tensor
    inference_delay: int
    execution_horizon: int
    offset: int

    def guide(self, velocity_fn: VelocityFn) -> VelocityFn:
        """`velocity_fn` (this plugin's convention: t = 0 noise, t = 1 data, v = dx/dt) with LeRobot's RTC
        guidance added on the executed part of the horizon.

        LeRobot's processor works in pi0's convention (time 1 = noise, 0 = data, v = -dx/dt): it gets time 1 - t
        and the negated velocity, and its guided velocity is negated back. Its correction is the weighted error
        itself, not a vector-Jacobian product through the network, so the positions before `offset` (weight 0)
        get no correction: the processor sees only the executed part, and the network runs once per call, without
        autograd (no backward pass, no saved activations)."""
        offset = self.offset

        def guided(x: Tensor, t: float) -> Tensor:
            velocity: list[Tensor] = []

            def executed_part(x_executed: Tensor) -> Tensor:
                with torch.no_grad():
                    velocity.append(velocity_fn(torch.cat([x[:, :offset], x_executed], dim=1), t))
                return -velocity[0][:, offset:]

            guided_executed = -self.processor.denoise_step(
                x_t=x[:, offset:],
                prev_chunk_left_over=self.prefix,
                inference_delay=self.inference_delay,
                time=1.0 - t,
                original_denoise_step_partial=executed_part,
                execution_horizon=self.execution_horizon,
            )
            return torch.cat([velocity[0][:, :offset], guided_executed.to(x.dtype)], dim=1)

        return guided


def make_prefix_guidance(
    prev_chunk_left_over: Tensor,
    inference_delay: int | None,
    execution_horizon: int | None,
    processor: RTCProcessor,
    batch_size: int,
    horizon: int,
    n_obs_steps: int,
    action_dim: int,
    policy_name: str,
    device: torch.device,
    dtype: torch.dtype,
) -> PrefixGuidance:
    """Check the engine's inputs against the policy's chunk and lay the prefix out as (B, T, A) on `device`.

    A prefix longer than the executed chunk is cut to it (the engine pads or cuts the left-over to
    `--inference.rtc.execution_horizon`, which may exceed a short chunk). `inference_delay` None means 0: no
    action is known to be executed before the new chunk arrives."""
    chunk = horizon - n_obs_steps + 1
    prefix = prev_chunk_left_over
    if not isinstance(prefix, Tensor) or prefix.ndim not in (2, 3) or prefix.shape[-1] != action_dim:
        got = tuple(prefix.shape) if isinstance(prefix, Tensor) else type(prefix).__name__
        raise ValueError(
            f"{policy_name}: prev_chunk_left_over must be a tensor (T, {action_dim}) or (B, T, {action_dim}) of "
            f"normalized actions (what predict_action_chunk returned, from the first action not yet executed), "
            f"got {got}."
        )
    if prefix.ndim == 2:
        prefix = prefix.unsqueeze(0)
    if prefix.shape[0] not in (1, batch_size):
        raise ValueError(
            f"{policy_name}: prev_chunk_left_over holds {prefix.shape[0]} chunks for a batch of {batch_size} "
            "observations; give one per observation, or one for all."
        )
    delay = 0 if inference_delay is None else inference_delay
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise ValueError(f"{policy_name}: inference_delay must be an int >= 0 (control steps), got {delay!r}.")
    horizon_steps = processor.rtc_config.execution_horizon if execution_horizon is None else execution_horizon
    if isinstance(horizon_steps, bool) or not isinstance(horizon_steps, int) or horizon_steps < 0:
        raise ValueError(f"{policy_name}: execution_horizon must be an int >= 0, got {horizon_steps!r}.")
    prefix = prefix[:, :chunk].to(device=device, dtype=dtype).expand(batch_size, -1, -1)
    return PrefixGuidance(
        processor=processor,
        prefix=prefix,
        inference_delay=delay,
        execution_horizon=min(horizon_steps, prefix.shape[1]),
        offset=n_obs_steps - 1,
    )


def prefix_distance(samples: Tensor, guidance: PrefixGuidance) -> Tensor:
    """(B, L): the weighted squared distance of candidate chunks (B, L, horizon, A) to the prefix, with the
    weights LeRobot's RTC guidance gives each step (`RTCProcessor.get_prefix_weights`: 1 over the delay, then
    decaying to 0 at the execution horizon)."""
    length = guidance.prefix.shape[1]
    weights = guidance.processor.get_prefix_weights(guidance.inference_delay, guidance.execution_horizon, length)
    weights = weights.to(device=samples.device, dtype=samples.dtype)
    executed = samples[:, :, guidance.offset : guidance.offset + length]
    error = ((executed - guidance.prefix[:, None]) ** 2).mean(dim=-1)  # (B, L, T)
    return (error * weights).sum(dim=-1)


def rtc_processor_for(policy_processor: RTCProcessor | None, rtc_config: RTCConfig | None) -> RTCProcessor:
    """The policy's processor when it was built from its current `rtc_config` (lerobot-rollout sets the config,
    then calls `init_rtc_processor`), else one built now: from `rtc_config`, or LeRobot's defaults when none is
    set (a direct call with a left-over)."""
    if policy_processor is not None and policy_processor.rtc_config is rtc_config:
        return policy_processor
    return RTCProcessor(rtc_config if rtc_config is not None else RTCConfig())


def rtc_processor_from_config(rtc_config: RTCConfig | None) -> RTCProcessor | None:
    """What a policy's `init_rtc_processor` keeps: lerobot-rollout sets `config.rtc_config`, then calls it."""
    return RTCProcessor(rtc_config) if rtc_config is not None else None


def follows_prefix(rtc_config: RTCConfig | None, prev_chunk_left_over: Any) -> bool:
    """Whether a `predict_action_chunk` call is to follow a left-over: one is given and RTC is not disabled."""
    return prev_chunk_left_over is not None and (rtc_config is None or rtc_config.enabled)


def policy_prefix_guidance(
    policy: PreTrainedPolicy,
    cond: Tensor,
    prev_chunk_left_over: Tensor,
    inference_delay: int | None,
    execution_horizon: int | None,
) -> PrefixGuidance:
    """`make_prefix_guidance` for a flowstep policy's (its config's horizon, n_obs_steps, action_dim and
    rtc_config; its rtc_processor) encoded observations `cond` (B, cond_dim)."""
    config = policy.config
    return make_prefix_guidance(
        prev_chunk_left_over,
        inference_delay,
        execution_horizon,
        rtc_processor_for(policy.rtc_processor, config.rtc_config),
        batch_size=cond.shape[0],
        horizon=config.horizon,
        n_obs_steps=config.n_obs_steps,
        action_dim=config.action_dim,
        policy_name=policy.name,
        device=cond.device,
        dtype=cond.dtype,
    )
