"""PushT from the original demonstrations: teacher vs student vs LeRobot's diffusion policy, same budget.

1. `data/...replay.zarr` -> LeRobotDataset with the keys of LeRobot's `pusht` env in its keypoint variant
   (`observation.state` = agent xy, `observation.environment_state` = the 8 block corners);
2. the flowstep teacher, LeRobot's `diffusion` policy (its U-Net, `--diffusion-down-dims`), both trained for
   the same number of steps and batch size from the same samples; the student distilled from the teacher's
   cached samples;
3. each evaluated with LeRobot's `eval_policy` on `PushtEnv(obs_type="environment_state_agent_pos")` on the
   same seeded episodes: success rate (Wilson 95 % interval) and mean max coverage (t 95 % interval), plus
   chunk latency at batch 1.

    uv run python benchmarks/pusht.py --zarr ../shared/data/pusht/pusht_cchi_v7_replay.zarr
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from lerobot.configs import NormalizationMode
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot.envs.configs import PushtEnv
from lerobot.envs.factory import make_env, make_env_pre_post_processors
from lerobot.envs.utils import preprocess_observation
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.scripts.lerobot_eval import eval_policy

from lerobot_flowstep.converters.zarr import convert_zarr
from lerobot_flowstep.demo import load_checkpoint
from lerobot_flowstep.latency import measure_latency
from lerobot_flowstep.networks import NetworkConfig
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig
from lerobot_flowstep.teacher_cache import cache_from_samples
from lerobot_flowstep.training import load_samples, train_policy_on_dataset

REPO_ID = "local/pusht_keypoints"


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def mean_interval(values: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    half = z * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return (float(values.mean() - half), float(values.mean() + half))


def evaluate(checkpoint: Path, episodes: int, seed: int, batch_size: int, **overrides) -> dict:
    policy, pre, post = load_checkpoint(checkpoint, **overrides)
    env_cfg = PushtEnv(obs_type="environment_state_agent_pos")
    env = make_env(env_cfg, n_envs=batch_size)[env_cfg.type][0]
    env_pre, env_post = make_env_pre_post_processors(env_cfg, policy.config)
    start = time.perf_counter()
    try:
        info = eval_policy(env, policy, env_pre, env_post, pre, post, n_episodes=episodes, start_seed=seed)
    finally:
        env.close()
    successes = np.array([ep["success"] for ep in info["per_episode"]])
    max_rewards = np.array([ep["max_reward"] for ep in info["per_episode"]])
    obs, _ = make_env(env_cfg, n_envs=1)[env_cfg.type][0].reset(seed=0)
    batch = pre(preprocess_observation(obs))
    # LeRobot's diffusion policy reads an observation history from the batch when its queues are empty.
    batch = {
        k: v.unsqueeze(1).expand(-1, policy.config.n_obs_steps, *v.shape[1:]) if k.startswith("observation.") else v
        for k, v in batch.items()
    }
    policy.reset()
    with torch.inference_mode():
        latency = measure_latency(lambda: policy.predict_action_chunk(batch), warmup=5, repeats=50)
    return {
        "episodes": len(successes),
        "success_rate": float(successes.mean()),
        "success_ci95": wilson_interval(int(successes.sum()), len(successes)),
        "mean_max_coverage": float(max_rewards.mean()),
        "mean_max_coverage_ci95": mean_interval(max_rewards),
        "chunk_latency": latency.as_dict(),
        "eval_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zarr", required=True)
    parser.add_argument("--output", default="outputs/pusht")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of teacher and diffusion")
    parser.add_argument("--student-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="teacher learning rate")
    parser.add_argument("--diffusion-down-dims", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--hidden-dim", type=int, default=256, help="flowstep MLP width (teacher and student)")
    parser.add_argument("--num-blocks", type=int, default=3)
    parser.add_argument("--cache-samples", type=int, default=16)
    parser.add_argument("--cache-steps", type=int, default=5, help="Heun steps per cached teacher sample")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--eval-batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    root = out / "pusht_keypoints"
    if not root.exists():
        convert_zarr(args.zarr, root, mapping="pusht_keypoints", repo_id=REPO_ID)
    meta = LeRobotDatasetMetadata(REPO_ID, root=root)

    network = NetworkConfig(hidden_dim=args.hidden_dim, num_blocks=args.num_blocks)
    teacher_cfg = FlowstepTeacherConfig(device="cpu", optimizer_lr=args.lr, network=network)
    start = time.perf_counter()
    samples = load_samples(REPO_ID, root, teacher_cfg, meta)
    timings["load_samples_s"] = time.perf_counter() - start

    start = time.perf_counter()
    teacher, teacher_ckpt, _ = train_policy_on_dataset(
        teacher_cfg, REPO_ID, root, out / "teacher", args.steps, args.batch_size, args.seed, "teacher", samples
    )
    timings["teacher_train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    cache_path = out / "teacher" / "teacher_samples.safetensors"
    cache_path.unlink(missing_ok=True)
    cache_from_samples(
        teacher, str(teacher_ckpt), samples, cache_path, args.cache_samples, args.cache_steps, "heun", args.seed
    )
    timings["teacher_cache_s"] = time.perf_counter() - start

    start = time.perf_counter()
    student_cfg = ImleStudentConfig(
        device="cpu",
        teacher_path=str(teacher_ckpt),
        teacher_cache_path=str(cache_path),
        num_teacher_samples=args.cache_samples,
        optimizer_lr=3e-4,
    )
    _, student_ckpt, _ = train_policy_on_dataset(
        student_cfg, REPO_ID, root, out / "student", args.student_steps, args.batch_size, args.seed, "student", samples
    )
    timings["student_distill_s"] = time.perf_counter() - start

    start = time.perf_counter()
    diffusion_cfg = DiffusionConfig(
        device="cpu",
        horizon=16,
        n_action_steps=8,
        n_obs_steps=2,
        down_dims=tuple(args.diffusion_down_dims),
        # LeRobot's diffusion mapping leaves the keypoint environment state unnormalized; give it the same
        # MIN_MAX the flowstep policies use, so that the comparison is about the generative model.
        normalization_mapping={
            "VISUAL": NormalizationMode.MEAN_STD,
            "STATE": NormalizationMode.MIN_MAX,
            "ENV": NormalizationMode.MIN_MAX,
            "ACTION": NormalizationMode.MIN_MAX,
        },
    )
    _, diffusion_ckpt, _ = train_policy_on_dataset(
        diffusion_cfg, REPO_ID, root, out / "diffusion", args.steps, args.batch_size, args.seed, "diffusion", samples
    )
    timings["diffusion_train_s"] = time.perf_counter() - start

    seed = 100_000 + args.seed
    common = (args.eval_episodes, seed, args.eval_batch_size)
    results = {
        "teacher (10 Euler steps)": evaluate(teacher_ckpt, *common),
        "IMLE student (16 candidates)": evaluate(student_ckpt, *common),
        "IMLE student (1 sample)": evaluate(student_ckpt, *common, num_inference_candidates=1),
        "diffusion (DDPM-100)": evaluate(diffusion_ckpt, *common),
        "diffusion (DDIM-10)": evaluate(diffusion_ckpt, *common, noise_scheduler_type="DDIM", num_inference_steps=10),
    }
    report = {"args": vars(args), "timings_s": {k: round(v, 1) for k, v in timings.items()}, "results": results}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print("| method | success [95% CI] | mean max coverage [95% CI] | chunk latency (ms) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        lo, hi = r["success_ci95"]
        clo, chi = r["mean_max_coverage_ci95"]
        print(
            f"| {name} | {r['success_rate']:.1%} [{lo:.1%}, {hi:.1%}] | {r['mean_max_coverage']:.3f} "
            f"[{clo:.3f}, {chi:.3f}] | {r['chunk_latency']['median_ms']:.2f} |"
        )
    print(json.dumps(report["timings_s"]))


if __name__ == "__main__":
    main()
