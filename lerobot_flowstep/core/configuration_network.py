"""The chunk network's settings, apart from the networks, so that a policy config parses without importing
diffusers (whose 1-D U-Net the `unet` type reuses through LeRobot)."""

from __future__ import annotations

from dataclasses import dataclass

from lerobot_flowstep.core.config_errors import command_line_errors

NETWORKS = ("mlp", "unet")


@command_line_errors
@dataclass
class NetworkConfig:
    """`mlp`: residual MLP over the flattened chunk with FiLM conditioning (fast on CPU).
    `unet`: LeRobot's diffusion-policy 1-D temporal U-Net."""

    type: str = "mlp"
    hidden_dim: int = 512
    num_blocks: int = 4
    time_embed_dim: int = 128
    down_dims: tuple[int, ...] = (128, 256, 512)
    kernel_size: int = 5
    n_groups: int = 8
    use_film_scale_modulation: bool = True

    def __post_init__(self) -> None:
        if self.type not in NETWORKS:
            raise ValueError(f"network.type must be one of {NETWORKS}, got '{self.type}'.")
