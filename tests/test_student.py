"""The IMLE student in process: teacher handling, latents, gradients, saving, the cache and bad input."""

import pytest
import torch
from conftest import ACTION_FEATURES
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.factory import get_policy_class
from safetensors import safe_open

from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig
from lerobot_flowstep.policies.imle_student.modeling_imle_student import ImleStudentPolicy
from lerobot_flowstep.policies.imle_student.teacher_cache import write_teacher_cache
from lerobot_flowstep.tools.cache_teacher import sample_teacher

FEATURES = {
    "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
    "observation.environment_state": PolicyFeature(FeatureType.ENV, (4,)),
}


def _features():
    return {k: PolicyFeature(v.type, v.shape) for k, v in FEATURES.items()}


@pytest.fixture
def teacher_dir(tmp_path):
    cfg = FlowstepTeacherConfig(
        device="cpu", input_features=_features(), output_features=dict(ACTION_FEATURES), horizon=8, n_action_steps=4
    )
    cfg.network.hidden_dim = 32
    cfg.network.num_blocks = 1
    torch.manual_seed(0)
    FlowstepTeacherPolicy(cfg).save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def _student(teacher_dir, **kwargs):
    cfg = ImleStudentConfig(
        device="cpu",
        teacher_path=str(teacher_dir),
        input_features=_features(),
        output_features=dict(ACTION_FEATURES),
        **({"num_teacher_samples": 3, "num_student_samples": 4} | kwargs),
    )
    return ImleStudentPolicy(cfg)


def _batch(b=5, horizon=8):
    g = torch.Generator().manual_seed(0)
    return {
        "observation.state": torch.randn(b, 2, 2, generator=g),
        "observation.environment_state": torch.randn(b, 2, 4, generator=g),
        "action": torch.randn(b, horizon, 2, generator=g),
        "action_is_pad": torch.zeros(b, horizon, dtype=torch.bool),
        "index": torch.arange(b),
    }


def test_student_is_registered_and_inherits_the_teacher_architecture(teacher_dir):
    assert get_policy_class("imle_student") is ImleStudentPolicy
    student = _student(teacher_dir)
    assert student.config.horizon == 8 and student.config.n_action_steps == 4  # teacher's, not the defaults
    assert student.config.network.hidden_dim == 32
    assert student.config.teacher_config_inherited


def test_gradients_reach_only_the_student_and_the_teacher_is_not_saved(teacher_dir, tmp_path):
    student = _student(teacher_dir).train()
    teacher_before = {k: v.clone() for k, v in student.teacher.state_dict().items()}
    optimizer = torch.optim.SGD(student.get_optim_params(), lr=0.1)
    loss, info = student.forward(_batch())
    loss.backward()
    assert {"chamfer_loss", "coverage", "fidelity"} <= set(info)
    assert all(p.grad is None and not p.requires_grad for p in student.teacher.parameters())
    assert student.generator.inp.weight.grad.abs().sum() > 0
    optimizer.step()
    assert all(torch.equal(v, student.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not any(p is q for p in student.parameters() for q in student.teacher.parameters())

    student.save_pretrained(tmp_path / "student")
    with safe_open(str(tmp_path / "student" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(student.state_dict())
    assert not any(k.startswith(("teacher", "_teacher", "velocity")) for k in keys)
    # A trained student loads and acts with its teacher gone.
    for path in teacher_dir.iterdir():
        path.unlink()
    loaded = ImleStudentPolicy.from_pretrained(tmp_path / "student", strict=True)
    # From the newest of the 2 observation steps on: 7 of the horizon's 8 actions.
    assert loaded.predict_action_chunk(_batch(2)).shape == (2, 7, 2)


def test_candidates_get_distinct_latents(teacher_dir):
    student = _student(teacher_dir, num_candidate_sets=3).train()
    seen = []
    original = student.generate
    student.generate = lambda cond, noise: seen.append(noise) or original(cond, noise)
    student.forward(_batch(b=5))
    noise = seen[-1]
    assert noise.shape == (5 * 3 * 4, 8, 2)
    assert len({tuple(row.flatten().tolist()) for row in noise}) == noise.shape[0]


def test_inference_noise_scale_scales_only_the_sampling_latents(teacher_dir):
    student = _student(teacher_dir, inference_noise_scale=0.5).eval()
    batch = _batch(2)
    cond = student.encode(batch)
    samples = student.sample(batch, num_samples=3, generator=torch.Generator().manual_seed(7))
    z = torch.randn(6, 8, 2, generator=torch.Generator().manual_seed(7))
    expected = student.generate(cond.repeat_interleave(3, dim=0), 0.5 * z).reshape(2, 3, 8, 2)
    assert torch.allclose(samples, expected, atol=1e-6)
    # A rollout's candidates draw their latents the same way.
    seen = []
    original = student.generate
    student.generate = lambda cond, noise: seen.append(noise) or original(cond, noise)
    torch.manual_seed(3)
    student.predict_action_chunk(batch)
    torch.manual_seed(3)
    candidates = student.config.num_inference_candidates
    assert torch.allclose(seen[-1], 0.5 * torch.randn(2 * candidates, 8, 2))
    # Training keeps unit latents: the scale is an inference rule, not part of the objective.
    student.train()
    student.forward(_batch(b=5))
    assert seen[-1].shape[0] == 5 * 4 and seen[-1].std() > 0.8  # 320 unit normals; scaled ones give 0.5
    with pytest.raises(ValueError, match="inference_noise_scale"):
        ImleStudentConfig(device="cpu", inference_noise_scale=-1.0)


@pytest.mark.parametrize("extra_blocks", [0, 2])
def test_student_starts_as_the_teachers_one_step_euler_sampler(teacher_dir, extra_blocks):
    student = _student(teacher_dir, extra_generator_blocks=extra_blocks).train()
    assert len(student.generator.blocks) == len(student.teacher.velocity.blocks) + extra_blocks
    student.initialize_from_teacher()
    batch = _batch()
    cond = student.encode(batch)
    z = torch.randn(5, 8, 2)
    expected = student.teacher.generate(student.teacher.encode(batch), z, num_steps=1, solver="euler")
    assert torch.allclose(student.generate(cond, z), expected, atol=1e-6)
    if extra_blocks:  # the added blocks start as the identity but learn: their zero layer has a gradient
        student.generate(cond, z).sum().backward()
        assert student.generator.blocks[-1].mlp[-1].weight.grad.abs().sum() > 0


def test_extra_generator_blocks_are_checked_by_name(teacher_dir):
    with pytest.raises(ValueError, match="extra_generator_blocks must be >= 0, got -1"):
        _student(teacher_dir, extra_generator_blocks=-1)


def test_samplers_embed_their_time_grid_once_per_set_of_weights(teacher_dir):
    """The one-step student always runs its network at t = 0 and the teacher's sampler on a fixed grid: both embed
    those times once, and get what the network gives when it embeds a (B,) tensor of times at every call."""
    student = _student(teacher_dir).eval()
    teacher = student.teacher
    batch = _batch()
    z = torch.randn(5, 8, 2)
    calls = []
    for network in (student.generator, teacher.velocity):
        network.time_embed.register_forward_hook(lambda *_: calls.append(1))

    def teacher_reference(num_steps):  # Euler with a tensor of times, which the network embeds at every step
        x, cond = z, teacher.encode(batch)
        for i in range(num_steps):
            x = x + teacher.velocity(x, torch.full((5,), i / num_steps), cond) / num_steps
        return x

    with torch.no_grad():
        cond = student.encode(batch)
        first = student.generate(cond, z)
        assert torch.equal(student.generate(cond, z), first) and len(calls) == 1  # one embedding, two chunks
        assert torch.allclose(first, z + student.generator(z, torch.zeros(5), cond), atol=1e-6)
        calls.clear()
        chunks = [teacher.generate(teacher.encode(batch), z, num_steps=5, solver="euler") for _ in range(3)]
        assert len(calls) == 5  # three chunks, the grid's 5 times embedded once
        assert all(torch.allclose(chunk, teacher_reference(5), atol=1e-6) for chunk in chunks)
        # New weights (a checkpoint loaded, a training step taken) are embedded again, not served stale.
        for network in (student.generator, teacher.velocity):
            weights = {k: v + 0.1 * torch.randn_like(v) for k, v in network.state_dict().items()}
            network.load_state_dict(weights)
        assert torch.allclose(student.generate(cond, z), z + student.generator(z, torch.zeros(5), cond), atol=1e-6)
        assert not torch.allclose(student.generate(cond, z), first, atol=1e-3)
        assert torch.allclose(teacher.generate(teacher.encode(batch), z, num_steps=5), teacher_reference(5), atol=1e-6)
    # Training embeds t = 0 with gradients: the kept embedding is for inference only.
    student.train()
    student.generate(student.encode(batch), z).sum().backward()
    assert student.generator.time_embed[1].weight.grad.abs().sum() > 0


def test_teacher_cache_replaces_online_sampling(teacher_dir, tmp_path):
    teacher = FlowstepTeacherPolicy.from_pretrained(teacher_dir)
    batch = _batch()
    draws = sample_teacher(teacher, [batch], num_samples=3, num_steps=2, solver="heun")
    samples, index = draws.samples, draws.index
    cache_file = write_teacher_cache(samples, index + 10, tmp_path / "cache.safetensors", {"note": "test"})
    student = _student(teacher_dir, teacher_cache_path=str(cache_file)).train()
    student._teacher_holder.append(None)  # any online sampling would now fail loudly
    student.initialize_from_teacher = lambda: None
    shifted = {**batch, "index": batch["index"] + 10}
    targets, latents, missing = student.teacher_targets(shifted)
    assert torch.equal(targets, samples) and latents is None and not missing.any()
    student.forward(shifted)[0].backward()
    # Frames the cache lacks stop the step, named, before any gradient is taken from a placeholder.
    with pytest.raises(KeyError, match=r"Frames \[0, 99\] are not in the teacher cache"):
        student.forward({**batch, "index": torch.tensor([0, 11, 12, 13, 99])})


def test_a_larger_cache_gives_each_step_a_fresh_subset_with_its_own_latents(teacher_dir, tmp_path):
    from lerobot_flowstep.policies.imle_student.teacher_cache import TeacherCache

    # Sample j of frame f holds the value 100 f + j everywhere, its latent the negative.
    frames, total = 5, 6
    codes = (100 * torch.arange(frames)[:, None] + torch.arange(total)).float()
    samples = codes[:, :, None, None].expand(frames, total, 8, 2).contiguous()
    path = write_teacher_cache(samples, torch.arange(frames), tmp_path / "c.safetensors", {}, -samples)
    cache = TeacherCache(path)
    index = torch.tensor([3, 1, 3])
    seen = set()
    for _ in range(30):
        drawn, latents, missing = cache.lookup_pairs(index, 3)
        assert drawn.shape == (3, 3, 8, 2) and not missing.any()
        assert torch.equal(latents, -drawn)  # each latent stays with its sample
        picked = drawn[:, :, 0, 0].long()
        assert torch.equal(picked // 100, index[:, None].expand(3, 3))  # from the frame asked for
        assert all(len(set(row.tolist())) == 3 for row in picked)  # without replacement
        seen.update(picked[0].tolist())
    # Every cached sample of the frame is used, not only the first three (the old lookup's slice).
    assert seen == {300 + j for j in range(total)}
    assert torch.equal(cache.lookup(index)[0], samples[index])  # all of them when no number is asked
    with pytest.raises(ValueError, match="holds 6 samples per frame; cannot draw 7"):
        cache.lookup(index, 7)
    # The student draws num_teacher_samples of them per step.
    student = _student(teacher_dir, teacher_cache_path=str(path), num_teacher_samples=3).train()
    targets, _, _ = student.teacher_targets({**_batch(), "index": index})
    assert targets.shape == (3, 3, 8, 2) and torch.equal(targets[:, :, 0, 0].long() // 100, index[:, None].expand(3, 3))


def test_paired_distillation_regresses_on_the_teachers_noise_to_chunk_map(teacher_dir, tmp_path):
    teacher = FlowstepTeacherPolicy.from_pretrained(teacher_dir)
    batch = _batch()
    paired = {"paired_weight": 1.0, "coverage_weight": 0.0, "fidelity_weight": 0.0, "include_dataset_action": False}

    def cached_student(num_steps, solver):
        draws = sample_teacher(teacher, [batch], 3, num_steps, solver, seed=5)
        samples, latents, index = draws.samples, draws.latents, draws.index
        # The stored latents are the ones each sample was integrated from.
        again = teacher.sample(batch, 3, noise=latents.flatten(0, 1), num_steps=num_steps, solver=solver)
        assert torch.allclose(again, samples, atol=1e-6)
        path = write_teacher_cache(samples, index, tmp_path / f"{solver}{num_steps}.safetensors", {}, latents)
        student = _student(teacher_dir, teacher_cache_path=str(path), num_student_samples=3, **paired)
        return student.train()

    # At initialization the student is the teacher's one-step Euler map, so against a one-step Euler cache the
    # paired loss is zero, but only if each student sample starts from its target's own latent.
    loss, info = cached_student(1, "euler").forward(batch)
    assert loss.item() < 1e-10 and info["paired_loss"] < 1e-10
    student = cached_student(4, "heun")
    loss, info = student.forward(batch)
    assert loss.item() > 1e-4 and loss.item() == pytest.approx(info["paired_loss"], rel=1e-5)
    loss.backward()
    assert student.generator.inp.weight.grad.abs().sum() > 0
    # Online sampling pairs the same way: a one-step Euler teacher gives a zero loss.
    online = _student(
        teacher_dir, num_student_samples=3, teacher_num_inference_steps=1, teacher_ode_solver="euler", **paired
    )
    assert online.train().forward(batch)[0].item() < 1e-10

    # A cache written before latents were kept, and a student that cannot be paired, are refused by name.
    draws = sample_teacher(teacher, [batch], 3, 1, "euler")
    old = write_teacher_cache(draws.samples, draws.index, tmp_path / "old.safetensors", {})
    with pytest.raises(ValueError, match="holds no latents"):
        _student(teacher_dir, teacher_cache_path=str(old), num_student_samples=3, **paired).train().forward(batch)
    with pytest.raises(ValueError, match="num_student_samples == num_teacher_samples"):
        _student(teacher_dir, paired_weight=1.0)  # 4 student samples, 3 teacher samples


def test_perturbed_observations_are_labelled_by_the_teacher_from_the_same_latents(teacher_dir):
    from lerobot_flowstep.policies.imle_student.modeling_imle_student import perturb_observations

    batch = _batch(b=400)
    keys = ["observation.state", "observation.environment_state"]
    perturbed = perturb_observations(batch, keys, 0.05)
    for key in keys:
        offset = perturbed[key] - batch[key]
        assert torch.allclose(offset[:, 0], offset[:, 1], atol=1e-6)  # one offset per observation, its history kept
        assert offset[:, 0].std().item() == pytest.approx(0.05, rel=0.1)
    assert perturbed["action"] is batch["action"] and perturbed["index"] is batch["index"]

    paired = {"paired_weight": 1.0, "coverage_weight": 0.0, "fidelity_weight": 0.0, "include_dataset_action": False}
    noisy = {"observation_noise_std": 0.5, "num_perturbed_samples": 2, "num_student_samples": 3, **paired}
    batch = _batch()
    # The student starts as the teacher's one-step Euler map at every observation, so against a one-step Euler
    # teacher the perturbed term is zero, but only if the student sees the very observation and latent the teacher
    # labelled.
    one_step = _student(teacher_dir, teacher_num_inference_steps=1, teacher_ode_solver="euler", **noisy).train()
    loss, info = one_step.forward(batch)
    assert loss.item() < 1e-10 and info["perturbed_paired_loss"] < 1e-10
    student = _student(teacher_dir, teacher_num_inference_steps=4, **noisy).train()
    loss, info = student.forward(batch)
    assert info["perturbed_paired_loss"] > 1e-4
    assert loss.item() == pytest.approx(info["paired_loss"] + info["perturbed_paired_loss"], rel=1e-5)
    loss.backward()
    assert student.generator.inp.weight.grad.abs().sum() > 0

    with pytest.raises(ValueError, match="observation_noise_std=0.1 .* set paired_weight > 0"):
        _student(teacher_dir, observation_noise_std=0.1)
    with pytest.raises(ValueError, match="observation_noise_std must be >= 0, got -0.1"):
        _student(teacher_dir, observation_noise_std=-0.1)


def test_paired_error_compares_noise_to_chunk_maps_not_distributions(teacher_dir):
    from lerobot_flowstep.tools.diagnostics import paired_errors

    student = _student(teacher_dir).eval()
    student.initialize_from_teacher()
    batch = _batch()
    # The student starts as the teacher's one-step Euler map: zero against it, not against 4 Heun steps.
    errors = paired_errors(student, student.teacher, batch, 8, num_steps=1, solver="euler")
    assert errors.shape == (5,) and errors.max() < 1e-10  # one error per observation, each zero
    assert paired_errors(student, student.teacher, batch, 8, num_steps=4, solver="heun").mean() > 1e-4
    # A map of -z has the same distribution (z and -z are alike) but other chunks: a different map.
    mirrored = _student(teacher_dir).eval()
    mirrored.initialize_from_teacher()
    mirrored.generate = lambda cond, noise: student.generate(cond, -noise)
    assert paired_errors(mirrored, student.teacher, batch, 8, num_steps=1, solver="euler").mean() > 1e-3


def test_the_executed_paired_error_sees_only_the_actions_a_rollout_executes(teacher_dir):
    from lerobot_flowstep.tools.diagnostics import paired_errors

    student = _student(teacher_dir).eval()
    student.initialize_from_teacher()
    config, batch = student.config, _batch()
    start, stop = config.n_obs_steps - 1, config.n_obs_steps - 1 + config.n_action_steps
    euler = {"num_steps": 1, "solver": "euler"}
    for window, changed in (((0, start), False), ((stop, config.horizon), False), ((start, start + 1), True)):
        shifted = _student(teacher_dir).eval()
        shifted.initialize_from_teacher()

        def generate(cond, noise, window=window):
            chunk = student.generate(cond, noise).clone()
            chunk[:, window[0] : window[1]] += 0.5
            return chunk

        shifted.generate = generate
        executed = paired_errors(shifted, student.teacher, batch, 4, executed_only=True, **euler)
        whole = paired_errors(shifted, student.teacher, batch, 4, **euler)
        assert whole.min() > 1e-3
        if changed:  # one of n_action_steps executed actions off by 0.5 in each of 2 dimensions
            assert executed == pytest.approx(torch.full_like(executed, 0.5 / config.n_action_steps), rel=1e-4)
        else:
            assert executed.max() < 1e-10


def test_a_memoized_teacher_draws_each_reference_once_with_unchanged_measurements(teacher_dir):
    """A diagnosis of many checkpoints measures each against the same teacher samples: drawn once, with the same
    numbers as drawn each time (the generator ends where it would have, so the policy's own draws are unchanged)."""
    from lerobot_flowstep.tools.diagnostics import MemoizedTeacher, paired_errors, sample_chamfer

    teacher = FlowstepTeacherPolicy.from_pretrained(teacher_dir)
    batch = _batch()
    students = []
    for scale in (0.0, 0.3):
        student = _student(teacher_dir).eval()
        student.initialize_from_teacher()
        student.generate = lambda cond, noise, s=student.generate, scale=scale: s(cond, noise) + scale
        students.append(student)
    heun = {"num_steps": 4, "solver": "heun"}
    plain = [
        (sample_chamfer(s, teacher, batch, 6, seed=0, **heun), paired_errors(s, teacher, batch, 6, seed=0))
        for s in students
    ]
    memo, calls = MemoizedTeacher(teacher), []
    sample = teacher.sample
    teacher.sample = lambda *a, **kw: calls.append(1) or sample(*a, **kw)
    memoized = [
        (sample_chamfer(s, memo, batch, 6, seed=0, **heun), paired_errors(s, memo, batch, 6, seed=0)) for s in students
    ]
    assert len(calls) == 2  # the Chamfer reference and the paired one, once each for both students
    for (chamfer, errors), (chamfer_memo, errors_memo) in zip(plain, memoized, strict=True):
        assert chamfer == chamfer_memo and torch.equal(errors, errors_memo)
    assert plain[0][1].max() > 0 and plain[1][1].mean() > plain[0][1].mean()  # the two students do differ
    # Another seed or other settings are another reference.
    paired_errors(students[0], memo, batch, 6, seed=1)
    sample_chamfer(students[0], memo, batch, 6, seed=0, num_steps=2, solver="euler")
    assert len(calls) == 4


def test_mismatched_teacher_fails_at_start_up_naming_both(teacher_dir):
    with pytest.raises(ValueError, match=r"action shape: teacher \(2,\) vs student/dataset \(3,\)"):
        ImleStudentPolicy(
            ImleStudentConfig(
                device="cpu",
                teacher_path=str(teacher_dir),
                input_features=_features(),
                output_features={"action": PolicyFeature(FeatureType.ACTION, (3,))},
            )
        )
    with pytest.raises(ValueError, match="horizon: teacher 8 vs student 16"):
        _student(teacher_dir, inherit_teacher_config=False)
    with pytest.raises(FileNotFoundError, match="no_such_teacher"):
        ImleStudentConfig(device="cpu", teacher_path="/tmp/no_such_teacher")


def test_candidate_selection_prefers_consistency_then_density():
    from lerobot_flowstep.policies.imle_student.modeling_imle_student import select_candidate

    horizon, shift = 6, 2
    left, right = torch.full((horizon, 1), -1.0), torch.full((horizon, 1), 1.0)
    between = torch.zeros(horizon, 1)
    # Without a previous chunk, the lone sample between the modes is never chosen.
    samples = torch.stack([between, left, left + 0.01, right, right - 0.01, left - 0.01, right + 0.02, between + 0.3])
    assert select_candidate(samples[None], None, shift).item() not in (0, 7)
    # With one, the candidate continuing the previous plan wins, even against a denser cluster.
    previous = torch.cat([torch.zeros(shift, 1), right[: horizon - shift]])[None]
    choice = select_candidate(samples[None], previous, shift).item()
    assert samples[choice].mean() > 0.5
    # The density rule ignores the previous plan: the densest cluster (left, three samples) wins.
    choice = select_candidate(samples[None], previous, shift, rule="density").item()
    assert samples[choice].mean() < -0.5


def test_consistent_density_keeps_the_mode_but_not_a_stray_copy_of_the_old_plan():
    from lerobot_flowstep.policies.imle_student.modeling_imle_student import select_candidate

    horizon, shift = 6, 2
    previous = torch.ones(1, horizon, 1)  # the old plan: the right mode, at 1.0
    left = [torch.full((horizon, 1), v) for v in (-1.0, -1.01, -0.99)]
    right = [torch.full((horizon, 1), v) for v in (1.1, 1.15, 1.2)]  # the right mode's typical samples
    stray = torch.ones(horizon, 1)
    stray[horizon - shift :] = 3.0  # copies the old plan exactly, then leaves the mode
    samples = torch.stack([*left, *right, stray, torch.zeros(horizon, 1)])[None]  # (1, 8, H, 1)
    assert select_candidate(samples, previous, shift, "consistency").item() == 6
    assert select_candidate(samples, previous, shift, "consistent_density").item() == 3
    assert select_candidate(samples, None, shift, "consistent_density").item() not in (6, 7)


def test_candidate_selection_rule_is_validated_and_used_by_the_policy(teacher_dir):
    with pytest.raises(
        ValueError, match=r"candidate_selection must be one of \('consistency', 'density', 'consistent_density'\)"
    ):
        ImleStudentConfig(device="cpu", candidate_selection="closest")
    student = _student(teacher_dir, candidate_selection="density", num_inference_candidates=8).eval()
    batch = _batch()
    with torch.no_grad():
        cond = student.encode(batch)
        student._last_chunk = torch.zeros_like(batch["action"])  # a previous plan, which the rule ignores
        torch.manual_seed(0)
        chunk = student._chunk_from_cond(cond)
        torch.manual_seed(0)
        samples = student.sample({}, num_samples=8, cond=cond)
    from lerobot_flowstep.policies.imle_student.modeling_imle_student import sparsity

    expected = samples[torch.arange(samples.shape[0]), sparsity(samples).argmin(dim=1)]
    torch.testing.assert_close(chunk, expected)


def test_energy_weight_is_validated_and_reaches_the_training_loss(teacher_dir):
    with pytest.raises(ValueError, match="energy_weight must be >= 0, got -1.0"):
        ImleStudentConfig(device="cpu", energy_weight=-1.0)
    with pytest.raises(ValueError, match="energy_weight=0.5 needs num_student_samples >= 2"):
        ImleStudentConfig(device="cpu", energy_weight=0.5, num_student_samples=1)
    losses = {}
    for weight in (0.0, 0.5):
        student = _student(teacher_dir, energy_weight=weight).train()
        torch.manual_seed(0)  # the same teacher targets and student latents for both weights
        loss, info = student.forward(_batch())
        losses[weight] = (loss.item(), info)
    assert "energy_score" not in losses[0.0][1]
    chamfer = losses[0.0][1]["coverage"] + losses[0.0][1]["fidelity"]
    assert losses[0.0][0] == pytest.approx(chamfer, rel=1e-5)
    assert losses[0.5][0] == pytest.approx(chamfer + 0.5 * losses[0.5][1]["energy_score"], rel=1e-5)


def test_resuming_after_the_teacher_folder_moved_names_the_folder(teacher_dir, tmp_path):
    student = _student(teacher_dir)
    student.save_pretrained(tmp_path / "student")
    moved = teacher_dir.rename(tmp_path / "elsewhere")
    resumed = ImleStudentPolicy.from_pretrained(tmp_path / "student").train()  # deploying needs no teacher
    with pytest.raises(
        FileNotFoundError, match=rf"Cannot read the teacher checkpoint '{teacher_dir}' \(teacher_path\)"
    ):
        resumed.forward(_batch())
    resumed.config.teacher_path = str(moved)
    loss, _ = resumed.forward(_batch())
    assert torch.isfinite(loss)


@pytest.mark.parametrize("policy_type", ["flowstep_teacher", "imle_student", "flowstep_regression"])
def test_lerobot_policy_contract_classes_and_default_configs(policy_type):
    """What LeRobot's own `tests/policies/test_policies.py` asks of a policy: a config from defaults alone, and
    a `config` annotation that is the config class itself (not a string under postponed annotations)."""
    import inspect

    from lerobot.policies.factory import make_policy_config

    policy_class = get_policy_class(policy_type)
    config = make_policy_config(policy_type)
    assert policy_class.name == policy_type
    assert issubclass(config.__class__, inspect.signature(policy_class.__init__).parameters["config"].annotation)
    config.input_features, config.output_features = _features(), dict(ACTION_FEATURES)
    policy_class(config)  # builds from the defaults


def test_a_student_without_teacher_builds_and_asks_for_one_when_distillation_starts():
    student = ImleStudentPolicy(
        ImleStudentConfig(device="cpu", input_features=_features(), output_features=dict(ACTION_FEATURES))
    ).train()
    with pytest.raises(ValueError, match=r"set --policy.teacher_path="):
        student.forward(_batch(horizon=student.config.horizon))


def test_the_teacher_is_copied_once_and_never_again_after_resuming(teacher_dir, tmp_path, monkeypatch):
    calls = []
    original = ImleStudentPolicy.initialize_from_teacher
    monkeypatch.setattr(ImleStudentPolicy, "initialize_from_teacher", lambda self: calls.append(1) or original(self))
    student = _student(teacher_dir).train()
    for _ in range(3):
        student.forward(_batch())
    assert len(calls) == 1 and bool(student.initialized_from_teacher)
    student.save_pretrained(tmp_path / "student")
    resumed = ImleStudentPolicy.from_pretrained(tmp_path / "student").train()
    resumed.forward(_batch())
    assert len(calls) == 1  # the saved flag says the weights already hold (and have moved on from) the copy


def test_parsing_a_config_imports_no_network_or_vision_code():
    """Registering and parsing the configs must not import the encoder, the networks or any modeling module.
    LeRobot 0.6.1's own `lerobot.configs` and `lerobot.optim` already import torchvision and diffusers, so the
    baseline is taken after them: the plugin must add no heavy module of its own."""
    import subprocess
    import sys

    script = """
import sys
import lerobot.configs, lerobot.envs.configs, lerobot.optim, lerobot.processor
before = set(sys.modules)
import draccus
import lerobot_flowstep
from lerobot.configs import PreTrainedConfig
for name in ("flowstep_teacher", "imle_student", "flowstep_regression"):
    draccus.decode(PreTrainedConfig.get_choice_class(name), {"horizon": 32, "network": {"type": "unet"}})
added = sorted(set(sys.modules) - before)
heavy = [m for m in added if m.split(".")[0] in ("torchvision", "diffusers") or "modeling" in m
         or m in ("lerobot_flowstep.core.encoder", "lerobot_flowstep.core.networks")]
print(heavy)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_perturbed_cache_labels_each_sample_at_its_own_perturbed_observation(teacher_dir, tmp_path):
    """Offline observation noise: each cached chunk is the teacher's map at its own offset copy of its frame, and
    the student regresses on exactly that observation and latent, with the teacher never called."""
    teacher = FlowstepTeacherPolicy.from_pretrained(teacher_dir)
    batch = _batch()
    keys = ["observation.environment_state", "observation.state"]
    draws = sample_teacher(teacher, [batch], 3, 2, "euler", seed=5, observation_noise_std=0.3)
    assert sorted(draws.offsets) == keys and draws.samples.shape == (5, 3, 8, 2)
    for key in keys:
        assert draws.offsets[key].shape == (5, 3, batch[key].shape[-1])
        assert 0.1 < draws.offsets[key].std().item() < 0.6
    # Independent reference: each (frame, copy) as a one-row batch offset at every history step by hand.
    for i in range(5):
        for j in range(3):
            row = {key: batch[key][i : i + 1] for key in keys}
            row = {key: row[key] + draws.offsets[key][i, j] for key in keys}
            chunk = teacher.generate(teacher.encode(row), draws.latents[i, j][None], num_steps=2, solver="euler")
            assert torch.allclose(chunk[0], draws.samples[i, j], atol=1e-5)

    paired = {"paired_weight": 1.0, "coverage_weight": 0.0, "fidelity_weight": 0.0, "include_dataset_action": False}
    plain = sample_teacher(teacher, [batch], 3, 1, "euler", seed=1)
    # Frame 99 (a copy of frame 0) only in this cache: the perturbed cache is the one that lacks it below.
    plain_path = write_teacher_cache(
        torch.cat([plain.samples, plain.samples[:1]]), torch.cat([plain.index, torch.tensor([99])]),
        tmp_path / "plain.safetensors", {}, torch.cat([plain.latents, plain.latents[:1]]),
    )  # fmt: skip

    def offline_student(num_steps: int, std: float = 0.3, cache_std: float = 0.3, num_perturbed_samples: int = 2):
        drawn = sample_teacher(teacher, [batch], 3, num_steps, "euler", seed=7, observation_noise_std=cache_std)
        path = write_teacher_cache(
            drawn.samples, drawn.index, tmp_path / f"perturbed{num_steps}_{cache_std}.safetensors",
            {"observation_noise_std": str(cache_std)}, drawn.latents, drawn.offsets,
        )  # fmt: skip
        student = _student(
            teacher_dir, teacher_cache_path=str(plain_path), perturbed_cache_path=str(path), num_student_samples=3,
            observation_noise_std=std, num_perturbed_samples=num_perturbed_samples, **paired,
        ).train()  # fmt: skip
        student.initialize_from_teacher()
        student._teacher_copy_checked = True
        student._teacher_holder[:] = [None]  # any online teacher call now fails loudly
        return student

    # At initialization the student is the teacher's one-step Euler map at any observation: against one-step
    # Euler draws both paired terms vanish, but only if it sees each draw's own perturbed observation and latent.
    loss, info = offline_student(1).forward(batch)
    assert loss.item() < 1e-10 and info["perturbed_paired_loss"] < 1e-10
    student = offline_student(4)
    loss, info = student.forward(batch)
    assert info["perturbed_paired_loss"] > 1e-4
    assert loss.item() == pytest.approx(info["paired_loss"] + info["perturbed_paired_loss"], rel=1e-5)
    loss.backward()
    assert student.generator.inp.weight.grad.abs().sum() > 0
    with pytest.raises(KeyError, match=r"Frames \[99\] are not in the teacher cache .*perturbed4"):
        student.forward({**batch, "index": torch.tensor([0, 1, 2, 3, 99])})

    with pytest.raises(ValueError, match=r"perturbed_cache_path=.* holds 3 samples per frame, fewer than "):
        offline_student(1, num_perturbed_samples=4).forward(batch)
    with pytest.raises(KeyError, match="perturbed_cache_path is set but the batch has no 'index'"):
        student.cached_perturbed_paired_loss({k: v for k, v in batch.items() if k != "index"}, None)
    # A cache of another noise, a cache without offsets, and a perturbed cache without noise are refused by name.
    with pytest.raises(ValueError, match=r"drawn with observation_noise_std=0.2, the student is configured with 0.3"):
        offline_student(1, std=0.3, cache_std=0.2).forward(batch)
    with pytest.raises(ValueError, match="holds no observation offsets"):
        _student(
            teacher_dir, perturbed_cache_path=str(plain_path), observation_noise_std=0.3, num_student_samples=3,
            **paired,
        ).train().forward(batch)  # fmt: skip
    with pytest.raises(ValueError, match="set --policy.observation_noise_std to the noise the cache was drawn with"):
        _student(teacher_dir, perturbed_cache_path=str(plain_path), num_student_samples=3, **paired)
