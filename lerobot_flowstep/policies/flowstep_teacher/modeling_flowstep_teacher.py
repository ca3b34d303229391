"""The Conditional Flow Matching teacher policy."""

from lerobot.utils.constants import ACTION
from torch import Tensor

from lerobot_flowstep.core.flow_matching import cfm_loss, integrate, sample_time
from lerobot_flowstep.core.networks import make_chunk_network
from lerobot_flowstep.policies.common.policy_base import FlowstepBasePolicy
from lerobot_flowstep.policies.common.rtc import PrefixGuidance
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig


class FlowstepTeacherPolicy(FlowstepBasePolicy):
    """Multi-modal action chunks by integrating a learned velocity field from N(0, I) (t = 0) to the
    action distribution (t = 1), conditioned on the unified encoder's output.

    Real-time chunking: `predict_action_chunk` follows a left-over prefix with LeRobot's RTC guidance, so that
    `lerobot-rollout --inference.type=rtc` serves it (see `policies/common/rtc.py`)."""

    config_class = FlowstepTeacherConfig
    name = "flowstep_teacher"

    def __init__(self, config: FlowstepTeacherConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.velocity = make_chunk_network(config.network, config.horizon, config.action_dim, self.encoder.cond_dim)

    def generate(
        self,
        cond: Tensor,
        noise: Tensor,
        num_steps: int | None = None,
        solver: str | None = None,
        guidance: PrefixGuidance | None = None,
    ) -> Tensor:
        condition = self.velocity.condition(cond)  # the same at every step of the chunk: computed once

        def velocity(x: Tensor, t: float) -> Tensor:
            return self.velocity(x, t, condition)

        return integrate(
            velocity if guidance is None else guidance.guide(velocity),
            noise,
            num_steps or self.config.num_inference_steps,
            solver or self.config.ode_solver,
        )

    # --- real-time chunking (LeRobot's RTC engine) ----------------------------------------------

    def supports_rtc(self) -> bool:
        return True

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        actions = batch[ACTION]
        cond = self.encode(batch)
        t = sample_time(actions.shape[0], actions.device, self.config.time_sampling)
        noise = self.sample_noise(actions.shape[0], actions.device).to(actions.dtype)
        mask = ~batch["action_is_pad"] if "action_is_pad" in batch else None
        loss = cfm_loss(lambda x, tt: self.velocity(x, tt, cond), actions, t, noise, mask)
        return loss, self.training_info({"cfm_loss": loss}, batch)
