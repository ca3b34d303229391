"""The PushT benchmark's lerobot-train configs: they parse as LeRobot parses them, and the three policies
share the dataset, env, observation history and chunking, so the comparison is about the generative model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from lerobot.configs.train import TrainPipelineConfig
from lerobot.envs.configs import PushtEnv
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pusht"


def test_teacher_and_diffusion_configs_parse_and_agree(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # validate() refuses an existing output_dir, e.g. a benchmark run's
    teacher = TrainPipelineConfig.from_pretrained(CONFIGS / "teacher.json", cli_args=[])
    diffusion = TrainPipelineConfig.from_pretrained(CONFIGS / "diffusion.json", cli_args=[])
    assert isinstance(teacher.policy, FlowstepTeacherConfig) and isinstance(diffusion.policy, DiffusionConfig)
    for cfg in (teacher, diffusion):
        assert isinstance(cfg.env, PushtEnv) and cfg.env.obs_type == "environment_state_agent_pos"
        assert cfg.dataset.repo_id == "local/pusht_keypoints" and cfg.env_eval_freq == 0
        cfg.validate()
    for name in ("n_obs_steps", "horizon", "n_action_steps", "drop_n_last_frames"):
        assert getattr(teacher.policy, name) == getattr(diffusion.policy, name)
    # Every config trains on the same episodes and holds the rest out for the distillation diagnosis.
    assert teacher.dataset.episodes == diffusion.dataset.episodes == list(range(200))
    # The U-Net teacher: the diffusion policy's network, steps and batch size, so only the objective differs.
    unet = TrainPipelineConfig.from_pretrained(CONFIGS / "teacher_unet.json", cli_args=[])
    assert unet.policy.network.type == "unet"
    assert tuple(unet.policy.network.down_dims) == tuple(diffusion.policy.down_dims)
    assert (unet.steps, unet.batch_size) == (diffusion.steps, diffusion.batch_size)
    assert unet.policy.optimizer_lr == diffusion.policy.optimizer_lr
    # LeRobot's diffusion preset leaves the keypoint state unnormalized; ours normalizes it MIN_MAX.
    assert {k: v.value for k, v in diffusion.policy.normalization_mapping.items()} == {
        k: v.value for k, v in teacher.policy.normalization_mapping.items()
    }


@pytest.mark.parametrize(("teacher", "student"), [("teacher", "student"), ("teacher_unet", "student_unet")])
def test_student_config_points_at_the_teacher_it_is_distilled_from(tmp_path: Path, teacher: str, student: str) -> None:
    teacher_json, student_json = (json.loads((CONFIGS / f"{n}.json").read_text()) for n in (teacher, student))
    teacher_dir = teacher_json["output_dir"]
    assert student_json["policy"]["teacher_path"] == f"{teacher_dir}/checkpoints/last/pretrained_model"
    assert Path(student_json["policy"]["teacher_cache_path"]).parent == Path(teacher_dir)
    if "perturbed_cache_path" in student_json["policy"]:  # drawn from the same teacher, at the student's noise
        assert Path(student_json["policy"]["perturbed_cache_path"]).parent == Path(teacher_dir)
        noise = student_json["policy"]["observation_noise_std"]
        assert f"perturbed{noise:g}x" in Path(student_json["policy"]["perturbed_cache_path"]).name
    assert student_json["dataset"] == teacher_json["dataset"] and student_json["env"] == teacher_json["env"]

    # The student reads its teacher's config when parsed: a stand-in teacher with a distinct horizon.
    network = NetworkConfig(**teacher_json["policy"]["network"])
    stand_in = FlowstepTeacherConfig(horizon=12, n_action_steps=4, network=network)
    stand_in._save_pretrained(tmp_path)
    cfg = TrainPipelineConfig.from_pretrained(
        CONFIGS / f"{student}.json", cli_args=[f"--policy.teacher_path={tmp_path}"]
    )
    assert isinstance(cfg.policy, ImleStudentConfig) and cfg.policy.horizon == 12
    # As JSON, where a tuple and the list it was read from are the same field.
    assert json.loads(json.dumps(asdict(cfg.policy.network))) == json.loads(json.dumps(asdict(network)))
