"""Real-time chunking: the teacher's prefix guidance against LeRobot's own RTC code, the student's prefix rule, the
contract lerobot-rollout's RTC engine checks, and bad input. The engine itself runs in the slow test of
`test_sim_robot.py`."""

import pytest
import torch
from conftest import ACTION_FEATURES
from lerobot.configs import FeatureType, PolicyFeature, PreTrainedConfig, RTCAttentionSchedule
from lerobot.policies.common.flow_matching import euler_integrate
from lerobot.policies.rtc import RTCConfig, RTCProcessor
from lerobot.rollout.inference.rtc import supports_rtc_inference

from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig
from lerobot_flowstep.policies.imle_student.modeling_imle_student import ImleStudentPolicy

FEATURES = {"observation.state": PolicyFeature(FeatureType.STATE, (4,))}
HORIZON = 16


def _teacher(n_obs_steps: int = 2, rtc_config: RTCConfig | None = None, **kwargs) -> FlowstepTeacherPolicy:
    cfg = FlowstepTeacherConfig(
        device="cpu",
        input_features=dict(FEATURES),
        output_features=dict(ACTION_FEATURES),
        horizon=HORIZON,
        n_obs_steps=n_obs_steps,
        n_action_steps=4,
        **kwargs,
    )
    cfg.network.hidden_dim = 32
    cfg.network.num_blocks = 1
    torch.manual_seed(0)
    policy = FlowstepTeacherPolicy(cfg).eval()
    if rtc_config is not None:  # as lerobot-rollout does
        policy.config.rtc_config = rtc_config
        policy.init_rtc_processor()
    return policy


def _student(**kwargs) -> ImleStudentPolicy:
    cfg = ImleStudentConfig(
        device="cpu",
        input_features=dict(FEATURES),
        output_features=dict(ACTION_FEATURES),
        horizon=HORIZON,
        n_action_steps=4,
        **kwargs,
    )
    cfg.network.hidden_dim = 32
    cfg.network.num_blocks = 1
    torch.manual_seed(0)
    return ImleStudentPolicy(cfg).eval()


def _batch(b: int = 2) -> dict[str, torch.Tensor]:
    return {"observation.state": torch.randn(b, 4, generator=torch.Generator().manual_seed(1))}


def _prefix(length: int = 10, b: int | None = None) -> torch.Tensor:
    shape = (length, 2) if b is None else (b, length, 2)
    return 0.8 * torch.randn(shape, generator=torch.Generator().manual_seed(2))


def _noise(policy, b: int = 2) -> torch.Tensor:
    return policy.inference_noise(b, torch.device("cpu"), torch.Generator().manual_seed(3))


def test_lerobot_rollout_accepts_the_teacher_and_the_student_with_candidates_for_rtc():
    assert supports_rtc_inference(_teacher())
    assert supports_rtc_inference(_student())
    # One candidate leaves the student nothing to choose: lerobot-rollout refuses it with its own error.
    assert not supports_rtc_inference(_student(num_inference_candidates=1))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_the_guided_chunk_takes_up_the_left_over_over_the_delay_and_blends_into_it(solver):
    policy = _teacher(ode_solver=solver)
    batch, noise, prefix, delay = _batch(), _noise(policy), _prefix(), 3
    plain = policy.predict_action_chunk(batch, noise=noise)
    guided = policy.predict_action_chunk(batch, noise=noise, inference_delay=delay, prev_chunk_left_over=prefix)
    assert guided.shape == plain.shape == (2, HORIZON - 1, 2)

    def error(chunk, steps):
        return (chunk[:, steps] - prefix[steps]).abs().max().item()

    frozen = slice(0, delay)
    assert error(guided, frozen) < 0.05 * error(plain, frozen)
    # Past the delay the weights decay, so the pull is weaker, yet still towards the left-over.
    blended = slice(delay, 6)
    assert error(guided, blended) < 0.5 * error(plain, blended)


def _lerobot_reference(policy, batch, noise, prefix, delay, horizon_steps, processor):
    """LeRobot's own Euler loop with RTC, in its convention (time 1 = noise, v = noise - data), on the policy's
    velocity network: what pi0's `sample_actions` does."""
    condition = policy.velocity.condition(policy.encode(batch))
    with torch.no_grad():
        chunk = euler_integrate(
            lambda x, time: -policy.velocity(x, 1.0 - time, condition),
            noise,
            policy.config.num_inference_steps,
            rtc_processor=processor,
            rtc_enabled=True,
            inference_delay=delay,
            prev_chunk_left_over=prefix,
            execution_horizon=horizon_steps,
        )
    return chunk[:, policy.config.n_obs_steps - 1 :]


@pytest.mark.parametrize("schedule", [RTCAttentionSchedule.LINEAR, RTCAttentionSchedule.EXP])
def test_the_guided_chunk_is_lerobots_rtc_euler_loop_when_the_chunk_starts_at_the_newest_observation(schedule):
    rtc = RTCConfig(prefix_attention_schedule=schedule, execution_horizon=8, max_guidance_weight=5.0)
    policy = _teacher(n_obs_steps=1, rtc_config=rtc)
    batch, noise, prefix = _batch(), _noise(policy), _prefix(b=2)
    ours = policy.predict_action_chunk(batch, noise=noise, inference_delay=2, prev_chunk_left_over=prefix)
    reference = _lerobot_reference(policy, batch, noise, prefix, 2, 8, RTCProcessor(rtc))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_with_a_history_the_left_over_lines_up_with_the_newest_observations_step():
    """The network's chunk starts n_obs_steps - 1 steps before the newest observation: the left-over's first action
    is guided onto the chunk's action at the newest step, and the earlier steps get no pull."""
    rtc = RTCConfig(execution_horizon=6)
    policy = _teacher(n_obs_steps=3, rtc_config=rtc)
    offset = 2

    class ShiftedPrefixWeights(RTCProcessor):
        def get_prefix_weights(self, start, end, total):
            return torch.cat([torch.zeros(offset), super().get_prefix_weights(start, end, total - offset)])

    batch, noise, prefix = _batch(), _noise(policy), _prefix(6)
    ours = policy.predict_action_chunk(batch, noise=noise, inference_delay=2, prev_chunk_left_over=prefix)
    padded = torch.cat([torch.zeros(offset, 2), prefix])  # weight 0 there: any value
    reference = _lerobot_reference(policy, batch, noise, padded, 2, 6, ShiftedPrefixWeights(rtc))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert ours.shape == (2, HORIZON - offset, 2)


def _count_velocity_calls(policy) -> list[int]:
    calls = [0]

    def count(*_):
        calls[0] += 1

    policy.velocity.register_forward_hook(count)
    return calls


def test_without_a_left_over_or_with_rtc_disabled_the_chunk_is_the_plain_one_at_the_plain_cost():
    policy = _teacher(rtc_config=RTCConfig(enabled=False))
    batch, noise = _batch(), _noise(policy)
    calls = _count_velocity_calls(policy)
    plain = policy.predict_action_chunk(batch, noise=noise)
    assert calls[0] == policy.config.num_inference_steps
    first = policy.predict_action_chunk(batch, noise=noise, inference_delay=0, prev_chunk_left_over=None)
    disabled = policy.predict_action_chunk(batch, noise=noise, inference_delay=3, prev_chunk_left_over=_prefix())
    torch.testing.assert_close(first, plain, rtol=0, atol=0)
    torch.testing.assert_close(disabled, plain, rtol=0, atol=0)
    # Guided: still one network pass per step (LeRobot's correction needs no backward pass).
    policy.config.rtc_config = RTCConfig()
    policy.init_rtc_processor()
    calls[0] = 0
    policy.predict_action_chunk(batch, noise=noise, inference_delay=3, prev_chunk_left_over=_prefix())
    assert calls[0] == policy.config.num_inference_steps


def test_a_left_over_longer_than_the_chunk_is_cut_and_a_short_one_limits_the_blend():
    policy = _teacher()
    batch, noise = _batch(), _noise(policy)
    long_prefix = _prefix(40)
    chunk = policy.predict_action_chunk(batch, noise=noise, inference_delay=2, prev_chunk_left_over=long_prefix)
    cut = policy.predict_action_chunk(
        batch, noise=noise, inference_delay=2, prev_chunk_left_over=long_prefix[: HORIZON - 1]
    )
    torch.testing.assert_close(chunk, cut, rtol=0, atol=0)
    plain = policy.predict_action_chunk(batch, noise=noise)
    short = policy.predict_action_chunk(batch, noise=noise, inference_delay=2, prev_chunk_left_over=_prefix(3))
    assert (short[:, :2] - _prefix(3)[:2]).abs().max() < 0.05 * (plain[:, :2] - _prefix(3)[:2]).abs().max()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prev_chunk_left_over": torch.zeros(10, 3)}, r"prev_chunk_left_over must be a tensor \(T, 2\)"),
        ({"prev_chunk_left_over": torch.zeros(10)}, r"got \(10,\)"),
        ({"prev_chunk_left_over": [[0.0, 0.0]]}, "got list"),
        ({"prev_chunk_left_over": torch.zeros(3, 10, 2)}, "holds 3 chunks for a batch of 2"),
        ({"prev_chunk_left_over": torch.zeros(10, 2), "inference_delay": -1}, "inference_delay must be an int >= 0"),
        ({"prev_chunk_left_over": torch.zeros(10, 2), "inference_delay": 1.5}, "inference_delay must be an int"),
        ({"prev_chunk_left_over": torch.zeros(10, 2), "execution_horizon": -2}, "execution_horizon must be an int"),
    ],
)
@pytest.mark.parametrize("make", [_teacher, _student])
def test_bad_rtc_inputs_are_named(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make().predict_action_chunk(_batch(), **kwargs)


def test_the_student_executes_the_candidate_nearest_the_left_over_under_rtc_weights():
    policy = _student(num_inference_candidates=8)
    batch = _batch()
    cond = policy.encode(batch)
    torch.manual_seed(5)
    candidates = policy.sample({}, num_samples=8, cond=cond)[:, :, 1:]  # (B, L, H - 1, A), newest step on
    # Each observation's left-over continues another candidate, slightly perturbed.
    chosen = torch.tensor([6, 1])
    prefix = candidates[torch.arange(2), chosen, :10] + 0.01
    torch.manual_seed(5)
    chunk = policy.predict_action_chunk(batch, inference_delay=2, prev_chunk_left_over=prefix)
    torch.testing.assert_close(chunk, candidates[torch.arange(2), chosen])


def test_the_student_refuses_a_left_over_it_cannot_follow():
    with pytest.raises(ValueError, match="num_inference_candidates is 1"):
        _student(num_inference_candidates=1).predict_action_chunk(_batch(), prev_chunk_left_over=_prefix())
    student = _student()
    with pytest.raises(ValueError, match="`noise` fixes a single one"):
        student.predict_action_chunk(_batch(), noise=_noise(student), prev_chunk_left_over=_prefix())


def test_the_rtc_settings_lerobot_rollout_sets_are_no_part_of_the_saved_config(tmp_path):
    """lerobot-rollout assigns `config.rtc_config` on a loaded policy; saving that config (a rollout that records)
    must still write a config every LeRobot command loads, and parsing a config must not import LeRobot's policies
    (see test_student.py's import test)."""
    policy = _teacher(rtc_config=RTCConfig(execution_horizon=7))
    assert FlowstepTeacherConfig.rtc_config is None and ImleStudentConfig.rtc_config is None
    policy.config._save_pretrained(tmp_path)
    assert "rtc_config" not in (tmp_path / "config.json").read_text()
    loaded = PreTrainedConfig.from_pretrained(tmp_path)
    assert loaded.rtc_config is None and loaded.horizon == HORIZON


def save_state_checkpoint(policy, folder) -> None:
    """A checkpoint folder as lerobot-train writes it (weights, config and both processors), for a policy on the
    simulated robot's state (agent and goal positions, in [-1, 1])."""
    from lerobot.policies.factory import make_pre_post_processors

    span = {"min": -torch.ones(4), "max": torch.ones(4), "mean": torch.zeros(4), "std": torch.ones(4)}
    stats = {"observation.state": span, "action": {k: v[:2] for k, v in span.items()}}
    preprocessor, postprocessor = make_pre_post_processors(policy.config, dataset_stats=stats)
    policy.save_pretrained(folder)
    preprocessor.save_pretrained(folder)
    postprocessor.save_pretrained(folder)


@pytest.mark.slow
def test_lerobot_rollout_runs_the_teacher_with_rtc_on_the_simulated_robot(tmp_path):
    """`lerobot-rollout --inference.type=rtc`: LeRobot's RTC engine calls the teacher in its background thread,
    every call after the first with the left-over of the previous chunk; an error there would be logged and
    retried, and after 10 would stop the run."""
    import json

    from lerobot_flowstep.tools.lerobot_commands import lerobot_rollout, obstacle_sim_args

    policy = _teacher()
    policy.config.input_features = {"observation.state": PolicyFeature(FeatureType.STATE, (4,))}
    policy = FlowstepTeacherPolicy(policy.config)
    save_state_checkpoint(policy, tmp_path / "teacher")
    report_path, log = tmp_path / "rollout.json", tmp_path / "rollout.log"
    lerobot_rollout(
        [
            "--strategy.type=base",
            "--inference.type=rtc",
            "--inference.rtc.execution_horizon=8",
            f"--policy.path={tmp_path / 'teacher'}",
            "--policy.device=cpu",
            *obstacle_sim_args(30, 1.5, 0.4, tmp_path / "calibration", report_path),
            "--fps=30",
            "--duration=3",
            "--return_to_initial_position=false",
            "--play_sounds=false",
            "--task=Move the agent to the goal",
        ],
        log,
        timeout_s=600,
    )
    report = json.loads(report_path.read_text())
    assert report["actions"] > 0, report
    text = log.read_text()
    assert "RTC inference thread started" in text and "RTC inference error" not in text, text[-3000:]
