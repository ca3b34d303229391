"""Chunk networks: f(x, t | cond) -> (B, horizon, action_dim).

The teacher uses it as the CFM velocity field; the student uses the very same architecture as a one-step
generator from a latent (`lerobot_flowstep.policies.imle_student`), which lets it start from the
teacher's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.diffusion.modeling_diffusion import (
    DiffusionConditionalUnet1d,
    DiffusionSinusoidalPosEmb,
)
from torch import Tensor, nn

from lerobot_flowstep.core.configuration_network import NetworkConfig

# Sinusoidal embeddings are tuned for integer diffusion timesteps; flow time in [0, 1] is stretched to match.
TIME_SCALE = 1000.0


class _FiLMBlock(nn.Module):
    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        # Reads [time features, observation condition]; ChunkMLP applies the two column blocks apart.
        self.film = nn.Linear(cond_dim, 2 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.Mish(), nn.Linear(dim, dim))

    def forward(self, h: Tensor, film: Tensor) -> Tensor:
        """film: this block's FiLM output (B or 1, 2 * dim), scale then shift."""
        scale, shift = film.chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


@dataclass(frozen=True)
class FiLMCondition:
    """An observation's share of every block's FiLM, (B, 2 * hidden_dim) per block: `ChunkMLP.condition`."""

    per_block: tuple[Tensor, ...]


class ChunkMLP(nn.Module):
    """Residual FiLM MLP over the flattened chunk. Each block's FiLM is linear in [time features, condition], so
    it splits into a time part and an observation part: a sampler computes the observation part once per chunk
    (`condition`) and each float time's part once per set of weights (`_time_films`), and a network pass
    then costs its MLP only."""

    def __init__(self, cfg: NetworkConfig, horizon: int, action_dim: int, cond_dim: int):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.time_embed_dim = cfg.time_embed_dim
        self.time_embed = nn.Sequential(
            DiffusionSinusoidalPosEmb(cfg.time_embed_dim),
            nn.Linear(cfg.time_embed_dim, cfg.time_embed_dim),
            nn.Mish(),
        )
        film_dim = cfg.time_embed_dim + cond_dim
        self.inp = nn.Linear(horizon * action_dim, cfg.hidden_dim)
        self.blocks = nn.ModuleList(_FiLMBlock(cfg.hidden_dim, film_dim) for _ in range(cfg.num_blocks))
        self.out = nn.Sequential(nn.LayerNorm(cfg.hidden_dim), nn.Linear(cfg.hidden_dim, horizon * action_dim))
        # What inference keeps per set of weights (`_kept`): the weights' identity, and the parts it keeps.
        self._kept_parts: tuple[tuple, dict] = ((), {})

    def _kept(self) -> dict | None:
        """The parts kept for inference, a dict that lives as long as the weights the parts are computed from: its
        key, the storage and in-place version of every weight read, changes whenever they are loaded, trained or
        moved, so a kept part is never stale. None (compute afresh) when gradients must reach the weights
        (training), and for weights made under `torch.inference_mode`, which keep no version to check."""
        weights = [self.time_embed[1].weight, self.time_embed[1].bias]
        weights += [p for block in self.blocks for p in (block.film.weight, block.film.bias)]
        if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
            return None
        if any(w.is_inference() for w in weights):
            return None
        identity = tuple((w.data_ptr(), w._version) for w in weights)
        if self._kept_parts[0] != identity:
            self._kept_parts = (identity, {})
        return self._kept_parts[1]

    def condition(self, cond: Tensor) -> FiLMCondition:
        """The observation part of every block's FiLM for conditions (B, cond_dim): what does not change along a
        sampler's steps, computed once per chunk and passed to `forward` in place of `cond`."""
        return self._condition(cond, self._kept())

    def _condition(self, cond: Tensor, kept: dict | None) -> FiLMCondition:
        d = self.time_embed_dim
        if kept is None:
            return FiLMCondition(tuple(F.linear(cond, block.film.weight[:, d:]) for block in self.blocks))
        if "condition_weight" not in kept:
            # One matrix product for every block, from a contiguous copy: at batch 1 a product with a column
            # slice of each FiLM weight costs about a quarter more.
            kept["condition_weight"] = torch.cat([block.film.weight[:, d:] for block in self.blocks]).contiguous()
        per_block = F.linear(cond, kept["condition_weight"]).split(self.blocks[0].film.out_features, dim=-1)
        return FiLMCondition(tuple(per_block))

    def _film_time_parts(self, t: Tensor) -> tuple[Tensor, ...]:
        """The time part of every block's FiLM for flow times t (B,) (stretched to the sinusoids' scale)."""
        features = self.time_embed(t * TIME_SCALE)
        d = self.time_embed_dim
        return tuple(F.linear(features, block.film.weight[:, :d], block.film.bias) for block in self.blocks)

    def _time_films(self, t: Tensor | float, like: Tensor, kept: dict | None) -> tuple[Tensor, ...]:
        """The time part of every block's FiLM (B or 1, 2 * hidden_dim), for a (B,) tensor of times or one float
        time shared by the batch. A float time comes from a sampler (`integrate`, the one-step student), which
        evaluates the same few times at every chunk: at inference their parts are computed once (`_kept`)."""
        if isinstance(t, Tensor):
            return self._film_time_parts(t)
        key = (t, like.dtype, like.device)
        if kept is not None and key in kept:
            return kept[key]
        parts = self._film_time_parts(torch.full((1,), t, dtype=like.dtype, device=like.device))
        if kept is not None:
            if len(kept) >= 256:  # a caller sweeping t, not a solver's grid
                kept.clear()
            kept[key] = parts
        return parts

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | FiLMCondition) -> Tensor:
        """x: (B, horizon, action_dim); t: (B,) flow times, or one float time for the whole batch; cond: (B,
        cond_dim), or its `condition` computed once for all of a sampler's steps."""
        kept = self._kept()
        if not isinstance(cond, FiLMCondition):
            cond = self._condition(cond, kept)
        h = self.inp(x.flatten(1))
        for block, observation, time in zip(self.blocks, cond.per_block, self._time_films(t, x, kept), strict=True):
            h = block(h, observation + time)
        return self.out(h).reshape(-1, self.horizon, self.action_dim)


class ChunkUnet(nn.Module):
    def __init__(self, cfg: NetworkConfig, horizon: int, action_dim: int, cond_dim: int):
        super().__init__()
        factor = 2 ** (len(cfg.down_dims) - 1)
        if horizon % factor:
            raise ValueError(
                f"network.type='unet' with down_dims={cfg.down_dims} needs horizon divisible by {factor}, "
                f"got horizon={horizon}."
            )
        unet_cfg = SimpleNamespace(
            action_feature=PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,)),
            diffusion_step_embed_dim=cfg.time_embed_dim,
            down_dims=cfg.down_dims,
            kernel_size=cfg.kernel_size,
            n_groups=cfg.n_groups,
            use_film_scale_modulation=cfg.use_film_scale_modulation,
            gradient_checkpointing=False,
        )
        self.unet = DiffusionConditionalUnet1d(unet_cfg, global_cond_dim=cond_dim)

    def condition(self, cond: Tensor) -> Tensor:
        """The U-Net mixes condition and time inside LeRobot's blocks: nothing to compute ahead."""
        return cond

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor) -> Tensor:
        if not isinstance(t, Tensor):  # LeRobot's U-Net embeds its timesteps inside; one per sample
            t = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        return self.unet(x, t * TIME_SCALE, global_cond=cond)


def make_chunk_network(cfg: NetworkConfig, horizon: int, action_dim: int, cond_dim: int) -> nn.Module:
    cls = ChunkMLP if cfg.type == "mlp" else ChunkUnet
    return cls(cfg, horizon, action_dim, cond_dim)
