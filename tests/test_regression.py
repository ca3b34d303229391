"""The regression baseline (`flowstep_regression`): its target is the dataset chunk, its loss skips padding."""

import pytest
import torch
from lerobot.configs import FeatureType, PolicyFeature

from lerobot_flowstep.policies.flowstep_regression import FlowstepRegressionConfig
from lerobot_flowstep.policies.flowstep_regression.modeling_flowstep_regression import (
    FlowstepRegressionPolicy,
    masked_l2,
)
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig


def _policy() -> FlowstepRegressionPolicy:
    config = FlowstepRegressionConfig(
        device="cpu",
        horizon=8,
        n_action_steps=4,
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
    )
    return FlowstepRegressionPolicy(config).eval()


def test_masked_l2_matches_a_loop_over_the_real_steps():
    g = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(3, 5, 2, generator=g), torch.randn(3, 5, 2, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    errors = [((prediction[b, h] - target[b, h]) ** 2).mean() for b in range(3) for h in range(5) if mask[b, h]]
    assert masked_l2(prediction, target, mask) == pytest.approx(torch.stack(errors).mean().item(), rel=1e-6)
    assert masked_l2(prediction, target, None) == pytest.approx(((prediction - target) ** 2).mean().item())


def test_the_loss_pulls_the_prediction_onto_the_dataset_chunk_and_ignores_padding():
    policy = _policy()
    state = torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(1))
    prediction = policy.predict_horizon({"observation.state": state})
    assert torch.equal(prediction, policy.predict_horizon({"observation.state": state}))  # deterministic
    is_pad = torch.zeros(4, 8, dtype=torch.bool)
    is_pad[:, 6:] = True
    # One unit off on every real step, absurd on the padded ones: only the real steps may count.
    target = torch.where(is_pad[..., None], torch.full_like(prediction, 1e6), prediction + 1.0)
    batch = {"observation.state": state, "action": target, "action_is_pad": is_pad}
    loss, info = policy.train().forward(batch)
    assert loss.item() == pytest.approx(1.0, rel=1e-5) and info == {"l2_loss": pytest.approx(1.0, rel=1e-5)}
    loss.backward()
    assert policy.generator.out[1].weight.grad.abs().sum() > 0  # (the input layer only ever sees z = 0)


def test_a_student_config_saved_with_the_old_regression_objective_says_where_the_baseline_went():
    with pytest.raises(ValueError, match="--policy.type=flowstep_regression"):
        ImleStudentConfig(objective="regression")


def test_a_left_over_chunk_is_refused_by_name_not_silently_ignored():
    """The RTC arguments of `predict_action_chunk` are the base policy's; the L2 baseline cannot follow a
    left-over (supports_rtc() is false), and says so instead of returning a chunk that ignores it."""
    policy = _policy()
    state = torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(2))
    assert policy.predict_action_chunk({"observation.state": state}).shape[1] == 8 - 2 + 1
    with pytest.raises(ValueError, match="does not follow prev_chunk_left_over"):
        policy.predict_action_chunk(
            {"observation.state": state}, inference_delay=1, prev_chunk_left_over=torch.zeros(7, 2)
        )
