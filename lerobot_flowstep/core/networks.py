"""Chunk networks: f(x, t | cond) -> (B, horizon, action_dim).

The teacher uses it as the CFM velocity field; the student uses the very same architecture as a one-step
generator from a latent (`lerobot_flowstep.policies.imle_student`), which lets it start from the
teacher's weights.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
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
        self.film = nn.Linear(cond_dim, 2 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.Mish(), nn.Linear(dim, dim))

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(cond).chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class ChunkMLP(nn.Module):
    def __init__(self, cfg: NetworkConfig, horizon: int, action_dim: int, cond_dim: int):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.time_embed = nn.Sequential(
            DiffusionSinusoidalPosEmb(cfg.time_embed_dim),
            nn.Linear(cfg.time_embed_dim, cfg.time_embed_dim),
            nn.Mish(),
        )
        film_dim = cfg.time_embed_dim + cond_dim
        self.inp = nn.Linear(horizon * action_dim, cfg.hidden_dim)
        self.blocks = nn.ModuleList(_FiLMBlock(cfg.hidden_dim, film_dim) for _ in range(cfg.num_blocks))
        self.out = nn.Sequential(nn.LayerNorm(cfg.hidden_dim), nn.Linear(cfg.hidden_dim, horizon * action_dim))
        # Kept embeddings of float times (`_time_features`): (weights' identity, {(t, dtype, device): features}).
        self._time_cache: tuple[tuple, dict[tuple, Tensor]] = ((), {})

    def time_features(self, t: Tensor) -> Tensor:
        """The embedding of flow times t (B,) that `forward` conditions on, (B, time_embed_dim)."""
        return self.time_embed(t * TIME_SCALE)

    def _time_features(self, t: Tensor | float, like: Tensor) -> Tensor:
        """(B or 1, time_embed_dim) for a (B,) tensor of times or one float time shared by the batch.

        A float time comes from a sampler (`integrate`, the one-step student), which evaluates the same few
        times at every chunk: without gradients their embeddings are computed once per set of weights and kept.
        The key, the embedding weights' storage and in-place versions, changes whenever those weights are
        loaded, trained or moved, so a kept embedding is never stale."""
        if isinstance(t, Tensor):
            return self.time_features(t)
        linear = self.time_embed[1]
        if torch.is_grad_enabled() and linear.weight.requires_grad:
            return self.time_features(torch.full((1,), t, dtype=like.dtype, device=like.device))
        weights = (linear.weight.data_ptr(), linear.weight._version, linear.bias.data_ptr(), linear.bias._version)
        if self._time_cache[0] != weights:
            self._time_cache = (weights, {})
        kept = self._time_cache[1]
        key = (t, like.dtype, like.device)
        if key not in kept:
            if len(kept) >= 256:  # a caller sweeping t, not a solver's grid
                kept.clear()
            with torch.no_grad():
                kept[key] = self.time_features(torch.full((1,), t, dtype=like.dtype, device=like.device))
        return kept[key]

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor) -> Tensor:
        """t: (B,) flow times, or one float time for the whole batch (embedded once, `_time_features`)."""
        film = torch.cat([self._time_features(t, x).expand(cond.shape[0], -1), cond], dim=-1)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, film)
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

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor) -> Tensor:
        if not isinstance(t, Tensor):  # LeRobot's U-Net embeds its timesteps inside; one per sample
            t = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        return self.unet(x, t * TIME_SCALE, global_cond=cond)


def make_chunk_network(cfg: NetworkConfig, horizon: int, action_dim: int, cond_dim: int) -> nn.Module:
    cls = ChunkMLP if cfg.type == "mlp" else ChunkUnet
    return cls(cfg, horizon, action_dim, cond_dim)
