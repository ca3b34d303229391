"""Each observation frame goes through the encoder once: the rollout's per-frame feature cache gives the actions
of the full history, encodes only the frames a re-plan uses, and cameras sharing a backbone are encoded together."""

import pytest
import torch
from conftest import ACTION_FEATURES, camera_features
from lerobot.configs import FeatureType, PolicyFeature

from lerobot_flowstep.core.configuration_encoder import EncoderConfig
from lerobot_flowstep.core.encoder import UnifiedObservationEncoder
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig
from lerobot_flowstep.policies.imle_student.modeling_imle_student import ImleStudentPolicy

SIZE = 16
B = 2
N_OBS, N_ACTION, HORIZON = 2, 8, 12
FRAMES = 20
REPLANS = range(0, FRAMES, N_ACTION)


def _features(cameras=("top",)) -> dict[str, PolicyFeature]:
    features = {}
    for camera in cameras:
        features |= camera_features(SIZE, camera)
    return features


def _teacher_config(cameras=("top",)) -> FlowstepTeacherConfig:
    cfg = FlowstepTeacherConfig(
        device="cpu",
        input_features=_features(cameras),
        output_features=dict(ACTION_FEATURES),
        n_obs_steps=N_OBS,
        horizon=HORIZON,
        n_action_steps=N_ACTION,
        num_inference_steps=3,
    )
    cfg.encoder.vision_backbone = "conv"
    cfg.encoder.spatial_softmax_num_keypoints = 8
    cfg.network.hidden_dim = 32
    cfg.network.num_blocks = 1
    return cfg


def _policy(kind: str, tmp_path, cameras=("top",)):
    torch.manual_seed(0)
    if kind == "teacher":
        return FlowstepTeacherPolicy(_teacher_config(cameras)).eval()
    FlowstepTeacherPolicy(_teacher_config(cameras)).save_pretrained(tmp_path / "teacher")
    candidates = int(kind.split("-")[1])
    cfg = ImleStudentConfig(
        device="cpu",
        teacher_path=str(tmp_path / "teacher"),
        input_features=_features(cameras),
        output_features=dict(ACTION_FEATURES),
        num_inference_candidates=candidates,
    )
    return ImleStudentPolicy(cfg).eval()


def _fresh_copy(policy):
    torch.manual_seed(1)  # other initial weights, so that only the loaded state can make the actions agree
    copy = type(policy)(policy.config).eval()
    copy.load_state_dict(policy.state_dict(), strict=True)
    return copy


def _frames(n: int = FRAMES, cameras=("top",)) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    frames = []
    for _ in range(n):
        frame = {"observation.state": torch.rand(B, 2, generator=g) * 2 - 1}
        for camera in cameras:
            frame[f"observation.images.{camera}"] = torch.randn(B, 3, SIZE, SIZE, generator=g)
        frames.append(frame)
    return frames


def _stacked(frames: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([f[k] for f in frames], dim=1) for k in frames[0]}


def _history(frames, t: int) -> dict[str, torch.Tensor]:
    """The last N_OBS frames at step t, oldest first; the first frame stands for the steps before it."""
    return _stacked([frames[max(0, s)] for s in range(t - N_OBS + 1, t + 1)])


@pytest.mark.parametrize("kind", ["teacher", "student-1", "student-8"])
def test_cached_features_give_the_actions_of_the_full_history(kind, tmp_path):
    policy = _policy(kind, tmp_path)
    reference = _fresh_copy(policy)
    frames = _frames()
    # Fixed noise per re-plan, except for the student's candidates: noise given turns them off, so both runs
    # draw their latents from the same seed instead.
    fixed = kind != "student-8"
    noises = [torch.randn(B, HORIZON, 2, generator=torch.Generator().manual_seed(10 + t)) for t in REPLANS]

    torch.manual_seed(3)
    policy.reset()
    actions = [policy.select_action(f, noise=noises[t // N_ACTION] if fixed else None) for t, f in enumerate(frames)]

    torch.manual_seed(3)
    reference.reset()
    expected = []
    for i, t in enumerate(REPLANS):
        chunk = reference.predict_action_chunk(_history(frames, t), noise=noises[i] if fixed else None)
        expected += list(chunk[:, :N_ACTION].transpose(0, 1))  # the chunk starts at the newest frame
    for t, (a, e) in enumerate(zip(actions, expected, strict=False)):
        assert a.shape == (B, 2)
        torch.testing.assert_close(a, e, atol=1e-5, rtol=0, msg=f"step {t}")


def test_predict_action_chunk_keeps_the_students_plan_for_the_next_candidate_choice(tmp_path):
    policy = _policy("student-8", tmp_path)
    frames = _frames(2)
    policy.reset()
    chunk = policy.predict_action_chunk(_stacked(frames))  # as LeRobot's async inference calls it
    # The plan kept is the whole horizon; what is returned starts at the newest frame's step.
    assert torch.equal(policy._last_chunk[:, N_OBS - 1 :], chunk)
    # A batch of another size after it is not held to that plan, and does not fail.
    single = {k: v[:1] for k, v in _stacked(frames).items()}
    assert policy.predict_action_chunk(single).shape == (1, HORIZON - N_OBS + 1, 2)


def _count_image_encoder_calls(policy, steps: list[int]) -> list[tuple[int, int]]:
    """(control step, frames in the batch) of each call of the shared RGB image encoder."""
    calls = []
    policy.encoder.rgb_encoders["shared"].register_forward_hook(
        lambda module, args, out: calls.append((steps[-1], args[0].shape[0]))
    )
    return calls


def test_each_frame_is_encoded_once_and_only_if_a_replan_uses_it(tmp_path):
    cameras = ("top", "wrist")
    policy = _policy("teacher", tmp_path, cameras)
    steps = [-1]
    calls = _count_image_encoder_calls(policy, steps)
    policy.reset()
    for t, frame in enumerate(_frames(cameras=cameras)):
        steps.append(t)
        policy.select_action(frame)
    # Re-plans at 0, 8, 16 use frames (0, 0), (7, 8), (15, 16): frame 0 once for the whole first history,
    # then each of the other frames once, as it arrives, and never again; one frame at a re-plan. Each call
    # holds both cameras of the B envs.
    assert calls == [(0, 2 * B), (7, 2 * B), (8, 2 * B), (15, 2 * B), (16, 2 * B)]


def test_early_replan_encodes_the_frames_kept_raw_and_reset_forgets_the_history(tmp_path):
    policy = _policy("teacher", tmp_path)
    reference = _fresh_copy(policy)
    frames = _frames(4)
    conds, steps = [], [-1]
    calls = _count_image_encoder_calls(policy, steps)
    original = policy._chunk_from_cond
    policy._chunk_from_cond = lambda cond, noise=None: conds.append(cond) or original(cond, noise)

    policy.reset()
    for t in (0, 1):  # frame 1 comes 7 actions before the next re-plan: kept raw
        steps.append(t)
        policy.select_action(frames[t])
    assert calls == [(0, B)]
    policy._queues["action"].clear()  # a re-plan one step later than planned
    steps.append(2)
    policy.select_action(frames[2])
    assert calls[1:] == [(2, B), (2, B)]  # the new frame, then the raw one
    torch.testing.assert_close(conds[-1], reference.encode(_stacked(frames[1:3])), atol=1e-5, rtol=0)

    policy.reset()
    policy.select_action(frames[3])
    torch.testing.assert_close(conds[-1], reference.encode(frames[3]), atol=1e-5, rtol=0)


def _encoder(separate: bool) -> UnifiedObservationEncoder:
    cfg = EncoderConfig(
        vision_backbone="conv",
        spatial_softmax_num_keypoints=8,
        use_separate_rgb_encoder_per_camera=separate,
        depth_as_image=True,
        pointnet_hidden_dims=(16, 32),
        pointnet_out_dim=16,
        cond_dim=32,
    )
    features = _features(("top", "wrist")) | {"observation.pointcloud": PolicyFeature(FeatureType.STATE, (32, 3))}
    torch.manual_seed(0)
    return UnifiedObservationEncoder(cfg, features, N_OBS).eval()


def _encoder_batch(b: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    batch = {"observation.state": torch.randn(b, N_OBS, 2, generator=g)}
    for camera in ("top", "wrist"):
        batch[f"observation.images.{camera}"] = torch.randn(b, N_OBS, 3, SIZE, SIZE, generator=g)
        batch[f"observation.depth.{camera}"] = 1.0 + torch.rand(b, N_OBS, 1, SIZE, SIZE, generator=g)
    batch["observation.depth.top"][0, 0, 0, 0, 0] = float("nan")
    batch["observation.pointcloud"] = torch.randn(b, N_OBS, 32, 3, generator=g)
    return batch


def test_cameras_sharing_the_backbone_are_encoded_in_one_call_with_unchanged_features():
    encoder = _encoder(separate=False)
    assert encoder.rgb_keys == ["observation.images.top", "observation.images.wrist"]
    batch = _encoder_batch()
    b, s = batch["observation.state"].shape[:2]

    # The computation before the cameras were batched: one image-encoder call per camera, sorted keys.
    def per_step(module, x):
        return module(x.flatten(0, 1)).reshape(b, s, -1)

    parts = [batch["observation.state"]]
    parts += [per_step(encoder.rgb_encoders["shared"], batch[k]) for k in encoder.rgb_keys]
    for k in encoder.depth_keys:
        depth = torch.nan_to_num(batch[k], nan=0.0, posinf=0.0, neginf=0.0)
        parts.append(per_step(encoder.depth_encoders[k.replace(".", "__")], depth))
    parts.append(per_step(encoder.pointnets["observation__pointcloud"], batch["observation.pointcloud"]))
    expected = encoder.fuse(torch.cat(parts, dim=-1).flatten(start_dim=1))

    calls = []
    encoder.rgb_encoders["shared"].register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        torch.testing.assert_close(encoder(batch), expected.detach(), atol=1e-5, rtol=0)
        assert calls == [2 * b * s]  # both cameras, all frames, in one call
        calls.clear()
        frames = {k: v[:, -1] for k, v in batch.items()}
        features = encoder.encode_frames(frames)
        assert calls == [2 * b]
        assert features.shape == (b, encoder.step_dim)
        torch.testing.assert_close(features, torch.cat([p[:, -1] for p in parts], dim=-1), atol=1e-5, rtol=0)


def test_separate_camera_encoders_and_the_split_stages_match_forward():
    encoder = _encoder(separate=True)
    assert set(encoder.rgb_encoders) == {"observation__images__top", "observation__images__wrist"}
    batch = _encoder_batch()
    b, s = batch["observation.state"].shape[:2]
    calls = []
    for module in encoder.rgb_encoders.values():
        module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        cond = encoder(batch)
        assert calls == [b * s, b * s]
        frames = {k: v.flatten(0, 1) for k, v in batch.items()}
        staged = encoder.fuse_steps(encoder.encode_frames(frames).reshape(b, s, -1))
    assert cond.shape == (b, encoder.cond_dim)
    torch.testing.assert_close(staged, cond, atol=1e-6, rtol=0)
    with pytest.raises(KeyError, match="observation.pointcloud"):
        encoder.encode_frames({k: v for k, v in frames.items() if k != "observation.pointcloud"})
