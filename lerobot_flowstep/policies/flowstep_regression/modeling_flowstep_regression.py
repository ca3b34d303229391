"""The regression baseline policy."""

import torch
from lerobot.utils.constants import ACTION
from torch import Tensor

from lerobot_flowstep.core.networks import make_chunk_network
from lerobot_flowstep.policies.common.policy_base import FlowstepBasePolicy
from lerobot_flowstep.policies.flowstep_regression.configuration_flowstep_regression import FlowstepRegressionConfig


def masked_l2(prediction: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error over the real steps of each chunk: padded steps past an episode's end (mask False)
    carry no target. prediction, target: (B, H, A); mask: (B, H) or None."""
    error = ((prediction - target) ** 2).mean(-1)
    return error.mean() if mask is None else (error * mask).sum() / mask.sum().clamp(min=1)


class FlowstepRegressionPolicy(FlowstepBasePolicy):
    """a = f(0, t=0 | obs): the student's architecture with the latent fixed at zero, so one chunk per
    observation. Its network is named `generator`, as the student's, so that both load the same weights."""

    config_class = FlowstepRegressionConfig
    name = "flowstep_regression"

    def __init__(self, config: FlowstepRegressionConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.generator = make_chunk_network(config.network, config.horizon, config.action_dim, self.encoder.cond_dim)

    def sample_noise(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        return torch.zeros(n, self.config.horizon, self.config.action_dim, device=device)

    def generate(self, cond: Tensor, noise: Tensor) -> Tensor:
        return noise + self.generator(noise, 0.0, cond)  # a float time: embedded once at inference

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        cond = self.encode(batch)
        prediction = self.generate(cond, self.sample_noise(cond.shape[0], cond.device).to(cond.dtype))
        mask = ~batch["action_is_pad"] if "action_is_pad" in batch else None
        loss = masked_l2(prediction, batch[ACTION], mask)
        return loss, self.training_info({"l2_loss": loss}, batch)
