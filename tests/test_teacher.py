"""The teacher policy in process: loss, sampling, receding horizon, save/load and bad input."""

import json

import pytest
import torch
from conftest import ACTION_FEATURES, camera_features
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.factory import get_policy_class, make_pre_post_processors

from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy

SIZE = 16
K = [[12.0, 0.0, 7.5], [0.0, 12.0, 7.5], [0.0, 0.0, 1.0]]


def _config(config_class=FlowstepTeacherConfig, **kwargs) -> FlowstepTeacherConfig:
    cfg = config_class(
        device="cpu",
        input_features=camera_features(SIZE),
        output_features=dict(ACTION_FEATURES),
        horizon=8,
        n_action_steps=4,
        **kwargs,
    )
    cfg.encoder.vision_backbone = "conv"
    cfg.network.hidden_dim = 64
    cfg.network.num_blocks = 2
    cfg.pointcloud.cameras = ["top"]
    cfg.pointcloud.num_points = 32
    return cfg


def _stats():
    return {
        "observation.state": {"min": torch.tensor([-1.0, -1.0]), "max": torch.tensor([1.0, 1.0])},
        "observation.images.top": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.2)},
        "action": {"min": torch.tensor([-1.0, -1.0]), "max": torch.tensor([1.0, 1.0])},
    }


def _raw_batch(b=3, t=2, horizon=8):
    g = torch.Generator().manual_seed(0)
    return {
        "observation.state": torch.rand(b, t, 2, generator=g) * 2 - 1,
        "observation.images.top": torch.rand(b, t, 3, SIZE, SIZE, generator=g),
        "observation.depth.top": 1.0 + torch.rand(b, t, 1, SIZE, SIZE, generator=g),
        "observation.camera.top.intrinsics": torch.tensor(K).expand(b, t, 3, 3),
        "observation.camera.top.extrinsics": torch.eye(4).expand(b, t, 4, 4),
        "action": torch.rand(b, horizon, 2, generator=g) * 2 - 1,
        "action_is_pad": torch.zeros(b, horizon, dtype=torch.bool),
    }


def test_plugin_is_found_by_lerobot_factories():
    assert get_policy_class("flowstep_teacher") is FlowstepTeacherPolicy
    pre, _ = make_pre_post_processors(_config(), dataset_stats=_stats())
    names = [type(s).__name__ for s in pre.steps]
    # The point cloud is made from metric depth, before normalization.
    assert names.index("PointCloudProcessorStep") < names.index("NormalizerProcessorStep")


def test_training_loss_backpropagates_into_encoder_and_velocity():
    cfg = _config()
    policy = FlowstepTeacherPolicy(cfg)
    pre, _ = make_pre_post_processors(cfg, dataset_stats=_stats())
    batch = pre(_raw_batch())
    assert batch["observation.pointcloud"].shape == (3, 2, 32, 3)
    loss, info = policy.forward(batch)
    loss.backward()
    assert info["cfm_loss"] > 0
    assert policy.encoder.pointnets["observation__pointcloud"].mlp[0].weight.grad.abs().sum() > 0
    assert policy.velocity.inp.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("policy_type", ["flowstep_teacher", "flowstep_regression"])
def test_a_nonfinite_loss_stops_training_naming_the_step_and_the_keys(policy_type):
    if policy_type == "flowstep_regression":
        from lerobot_flowstep.policies.flowstep_regression import FlowstepRegressionConfig

        cfg = _config(FlowstepRegressionConfig)
    else:
        cfg = _config()
    policy = get_policy_class(policy_type)(cfg).train()
    pre, _ = make_pre_post_processors(cfg, dataset_stats=_stats())
    clean = pre(_raw_batch())
    policy.forward(clean)
    policy.forward(clean)
    raw = _raw_batch()
    raw["action"][1, 3, 0] = float("nan")
    poisoned = pre(raw)
    with pytest.raises(
        FloatingPointError,
        match=r"loss is nan at training forward call 3 .*batch keys holding NaN or inf: \['action'\]",
    ):
        policy.forward(poisoned)
    cfg.stop_on_nonfinite_loss = False
    loss, _ = policy.forward(poisoned)
    assert torch.isnan(loss)


def test_sample_returns_m_trajectories_per_observation_and_select_action_replans():
    cfg = _config()
    policy = FlowstepTeacherPolicy(cfg).eval()
    pre, post = make_pre_post_processors(cfg, dataset_stats=_stats())
    batch = pre(_raw_batch())
    samples = policy.sample(batch, num_samples=5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 5, 8, 2)
    assert not torch.allclose(samples[:, 0], samples[:, 1])  # distinct noise per sample

    calls = []
    original = policy._chunk_from_cond
    policy._chunk_from_cond = lambda cond, noise=None: calls.append(1) or original(cond, noise)
    policy.reset()
    obs = {k: v[:, -1] for k, v in batch.items() if k.startswith("observation.")}
    actions = [post(policy.select_action(obs)) for _ in range(9)]
    assert actions[0].shape == (3, 2)
    assert len(calls) == 3  # steps 0, 4 and 8 re-plan with n_action_steps = 4


def test_select_action_sees_its_history_and_training_never_sees_the_queues():
    cfg = _config()
    policy = FlowstepTeacherPolicy(cfg).eval()
    pre, _ = make_pre_post_processors(cfg, dataset_stats=_stats())
    batch = pre(_raw_batch())
    expected = policy.encode(batch)  # the dataloader batch, time dimension included

    # A rollout: two observations through select_action; the chunk is conditioned on both, oldest first.
    seen = []
    original = policy._chunk_from_cond
    policy._chunk_from_cond = lambda cond, noise=None: seen.append(cond) or original(cond, noise)
    policy.reset()
    other = {k: v.flip(0) for k, v in batch.items() if k.startswith("observation.")}
    policy.select_action({k: v[:, 0] for k, v in other.items()})
    policy._queues["action"].clear()  # force a re-plan at the next step
    policy.select_action({k: v[:, 1] for k, v in other.items()})
    torch.testing.assert_close(seen[-1], policy.encode(other))
    policy._chunk_from_cond = original

    # A training step right after the rollout, without reset: its own batch, not the rollout's queues.
    torch.testing.assert_close(policy.encode(batch), expected)


def test_from_pretrained_round_trip_gives_the_same_actions(tmp_path):
    cfg = _config()
    policy = FlowstepTeacherPolicy(cfg).eval()
    pre, post = make_pre_post_processors(cfg, dataset_stats=_stats())
    policy.save_pretrained(tmp_path)
    pre.save_pretrained(tmp_path)
    post.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "policy_preprocessor.json").read_text())
    step = next(s for s in saved["steps"] if s.get("registry_name") == "flowstep_pointcloud")
    assert step["config"]["cameras"] == ["top"] and step["config"]["num_points"] == 32

    loaded = FlowstepTeacherPolicy.from_pretrained(tmp_path, strict=True)
    pre2, post2 = make_pre_post_processors(loaded.config, pretrained_path=str(tmp_path))
    assert any(type(s).__name__ == "PointCloudProcessorStep" for s in pre2.steps)

    raw = _raw_batch()
    noise = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(1))
    a = post(policy.predict_action_chunk(pre(dict(raw)), noise=noise))
    b = post2(loaded.predict_action_chunk(pre2(dict(raw)), noise=noise))
    assert torch.allclose(a, b, atol=1e-6)


def test_point_cloud_overrides_at_evaluation_are_refused_not_silently_ignored(tmp_path):
    """lerobot-eval rebuilds the preprocessor from the saved file: a --policy.pointcloud.* override is refused."""
    cfg = _config()
    cfg.pointcloud.bounds_low, cfg.pointcloud.bounds_high = [-1.0, -1.0, 0.0], [1.0, 1.0, 3.0]
    FlowstepTeacherPolicy(cfg).save_pretrained(tmp_path)
    make_pre_post_processors(cfg, dataset_stats=_stats())[0].save_pretrained(tmp_path)
    loaded = FlowstepTeacherConfig.from_pretrained(tmp_path)
    FlowstepTeacherPolicy.from_pretrained(tmp_path, config=loaded)  # as saved: fine
    loaded.pointcloud.bounds_low = [-0.5, -0.5, 0.0]
    with pytest.raises(ValueError, match=r"bounds_low: saved \[-1.0, -1.0, 0.0\], requested \[-0.5, -0.5, 0.0\]"):
        FlowstepTeacherPolicy.from_pretrained(tmp_path, config=loaded)


def test_a_truncated_weights_file_is_named_in_the_error(tmp_path):
    FlowstepTeacherPolicy(_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"Cannot read the weights file {weights}: .*truncated or corrupt"):
        FlowstepTeacherPolicy.from_pretrained(tmp_path)


def test_checkpoint_with_another_action_dimension_is_refused_with_names(tmp_path):
    FlowstepTeacherPolicy(_config()).save_pretrained(tmp_path)
    cfg = _config()
    cfg.output_features = {"action": PolicyFeature(FeatureType.ACTION, (7,))}
    with pytest.raises(ValueError, match=r"action' of shape \(7,\)") as err:
        FlowstepTeacherPolicy.from_pretrained(tmp_path, config=cfg)
    assert "velocity" in str(err.value)


def test_no_usable_modality_is_refused_before_training():
    cfg = FlowstepTeacherConfig(
        device="cpu",
        input_features={"observation.camera.top.intrinsics": PolicyFeature(FeatureType.STATE, (3, 3))},
        output_features=dict(ACTION_FEATURES),
    )
    with pytest.raises(ValueError, match="no modality the encoder can use.*observation.camera.top.intrinsics"):
        FlowstepTeacherPolicy(cfg)


def test_point_cloud_camera_without_parameters_is_refused():
    features = camera_features(SIZE)
    del features["observation.camera.top.extrinsics"]
    cfg = FlowstepTeacherConfig(device="cpu", input_features=features, output_features=dict(ACTION_FEATURES))
    cfg.pointcloud.cameras = ["top"]
    with pytest.raises(ValueError, match="observation.camera.top.extrinsics"):
        FlowstepTeacherPolicy(cfg)
    cfg.pointcloud.fixed_cameras = {"top": {"intrinsics": K, "extrinsics": torch.eye(4).tolist()}}
    FlowstepTeacherPolicy(cfg)  # fixed parameters in the step's config are enough


def test_bad_solver_and_chunking_are_refused():
    with pytest.raises(ValueError, match="rk4"):
        FlowstepTeacherConfig(device="cpu", ode_solver="rk4")
    with pytest.raises(ValueError, match="n_action_steps"):
        FlowstepTeacherConfig(device="cpu", horizon=4, n_action_steps=8)


def test_a_rollout_frame_without_valid_depth_gives_finite_actions_and_bad_intrinsics_name_the_camera(caplog):
    """Empty clouds happen at evaluation (a camera sees only the far wall): the rollout goes on."""
    cfg = _config()
    cfg.pointcloud.bounds_low, cfg.pointcloud.bounds_high = [-1.0, -1.0, 0.5], [1.0, 1.0, 3.0]
    policy = FlowstepTeacherPolicy(cfg).eval()
    pre, post = make_pre_post_processors(cfg, dataset_stats=_stats())
    frame = {k: v[:, 0] for k, v in _raw_batch(b=2).items() if k.startswith("observation.")}
    frame["observation.depth.top"] = frame["observation.depth.top"].clone()
    frame["observation.depth.top"][1] = 0.0  # env 1: every pixel invalid
    policy.reset()
    for _ in range(cfg.n_action_steps + 1):  # two re-plans
        action = post(policy.select_action(pre(dict(frame))))
        assert action.shape == (2, 2) and torch.isfinite(action).all()
    assert "have no valid depth point of cameras ['top']" in caplog.text
    frame["observation.camera.top.intrinsics"] = torch.tensor(K).expand(2, 3, 3).clone()
    frame["observation.camera.top.intrinsics"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="camera 'top': intrinsics hold NaN or inf"):
        policy.select_action(pre(dict(frame)))
