"""Latency at batch 1: the one-step student against its teacher and LeRobot's diffusion policy.

Two settings:
- `--task embedded` (default): the embedded task's observations (state + environment state, horizon 16,
  2 observation steps), `predict_action_chunk` on an already preprocessed observation.
- `--task rlbench`: the RLBench size of the paper (4 cameras of 128x128 RGB + metric depth with per-frame
  camera parameters fused into a 1,024-point cloud, the converter's 15-D state, action 8, ResNet-18 +
  PointNet encoder), with policies and processors built through LeRobot's factory as `lerobot-eval` builds
  them, fed real frames
  of an RLBench demo. It times each stage (point-cloud step, preprocessor, encoder on one new frame,
  generator, postprocessor) and the end-to-end `select_action` step at a re-plan, as a rollout runs it
  (preprocessor + select_action + postprocessor), for the student, the teacher at 10 and 50 Euler steps
  and LeRobot's diffusion policy (DDIM-10) on the same RGB cameras; MLP and U-Net generators.

Latency does not depend on the weights, so untrained networks are timed unless checkpoints are given.

    uv run python benchmarks/latency.py --threads 1                  # the embedded table of BENCHMARKS.md
    uv run python benchmarks/latency.py --task rlbench --threads 1   # the RLBench-size table
    uv run python benchmarks/latency.py --task rlbench --device cuda # on a GPU
    uv run python benchmarks/latency.py --student-path outputs/demo/student/pretrained_model \
        --teacher-path outputs/demo/teacher/pretrained_model
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors
from lerobot.utils.constants import ACTION, OBS_STATE

from lerobot_flowstep.constants import depth_key, extrinsics_key, intrinsics_key, rgb_key
from lerobot_flowstep.core.configuration_encoder import EncoderConfig
from lerobot_flowstep.core.configuration_network import NetworkConfig
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig
from lerobot_flowstep.policies.imle_student.modeling_imle_student import ImleStudentPolicy
from lerobot_flowstep.processor.pointcloud import PointCloudConfig
from lerobot_flowstep.rlbench.conventions import DEFAULT_BOUNDS_HIGH, DEFAULT_BOUNDS_LOW, STATE_NAMES
from lerobot_flowstep.rlbench.demo_files import discover_episodes, read_episode
from lerobot_flowstep.rlbench.env import RLBenchEnv
from lerobot_flowstep.tools.latency import LatencyStats, measure_latency

UNET_DIMS = (128, 256, 512)
RLBENCH_CAMERAS = ("front", "left_shoulder", "right_shoulder", "wrist")
RLBENCH_EPISODE = Path(__file__).resolve().parents[2] / "shared/data/rlbench/reach_target/variation0/episodes/episode0"


def features():
    return (
        {
            "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (4,)),
        },
        {"action": PolicyFeature(FeatureType.ACTION, (2,))},
    )


def observation(device: str, n_obs_steps: int = 2) -> dict[str, torch.Tensor]:
    return {
        "observation.state": torch.zeros(1, n_obs_steps, 2, device=device),
        "observation.environment_state": torch.zeros(1, n_obs_steps, 4, device=device),
    }


def flowstep_pair(network: NetworkConfig, device: str, teacher_path: str | None, student_path: str | None):
    inputs, outputs = features()
    if teacher_path:
        teacher = FlowstepTeacherPolicy.from_pretrained(teacher_path)
    else:
        teacher = FlowstepTeacherPolicy(
            FlowstepTeacherConfig(device=device, input_features=inputs, output_features=outputs, network=network)
        )
    if student_path:
        student = ImleStudentPolicy.from_pretrained(student_path)
    else:
        # No teacher is needed to time inference: the student asks for one only when distillation starts.
        student = ImleStudentPolicy(
            ImleStudentConfig(device=device, input_features=inputs, output_features=outputs, network=network)
        )
    return teacher.to(device).eval(), student.to(device).eval()


def diffusion(scheduler: str, steps: int, device: str) -> DiffusionPolicy:
    inputs, outputs = features()
    config = DiffusionConfig(
        device=device,
        input_features=inputs,
        output_features=outputs,
        horizon=16,
        n_action_steps=8,
        noise_scheduler_type=scheduler,
        num_inference_steps=steps,
        down_dims=UNET_DIMS,
    )
    return DiffusionPolicy(config).to(device).eval()


def run(args: argparse.Namespace) -> list[dict]:
    device = args.device
    rows = []

    def add(name: str, stats: LatencyStats, nfe: int) -> None:
        rows.append({"method": name, "network_evaluations": nfe, **stats.as_dict()})
        print(f"{name:<44}{nfe:>5}  {stats}  ({stats.hz:,.0f} Hz)", flush=True)

    batch = observation(device)

    def timing(nfe: int = 1) -> dict:
        # Many-step samplers get fewer repeats so that the whole table fits in minutes on a CPU.
        return {"warmup": max(2, args.warmup // nfe), "repeats": max(10, args.repeats // nfe)}

    for label, network in (("MLP", NetworkConfig()), ("U-Net", NetworkConfig(type="unet", down_dims=UNET_DIMS))):
        use_paths = label == "MLP"
        # Built outside inference mode, as a checkpoint is loaded: weights made inside it keep no version counter,
        # and the MLP then recomputes at every call what it otherwise keeps per set of weights.
        teacher, student = flowstep_pair(
            network, device, args.teacher_path if use_paths else None, args.student_path if use_paths else None
        )
        with torch.inference_mode():
            cond = student.encode(batch)
            z = student.sample_noise(1, torch.device(device))
            add(f"student ({label}), bare generator forward", measure_latency(
                lambda s=student, c=cond, z=z: s.generator(z, 0.0, c), **timing()), 1)  # fmt: skip
            add(f"student ({label}), encoder + generator", measure_latency(
                lambda s=student, z=z: s.generate(s.encoder(batch), z), **timing()), 1)  # fmt: skip
            for candidates in (1, args.candidates):
                student.config.num_inference_candidates = candidates
                add(f"student ({label}), predict_action_chunk, {candidates} cand.", measure_latency(
                    lambda s=student: s.predict_action_chunk(batch), **timing()), 1)  # fmt: skip
            for steps in (10, 50):
                teacher.config.num_inference_steps = steps
                add(f"teacher ({label}), {steps} Euler steps", measure_latency(
                    lambda t=teacher: t.predict_action_chunk(batch), **timing(steps)), steps)  # fmt: skip
    for scheduler, steps in (("DDIM", 10), ("DDPM", 100)):
        policy = diffusion(scheduler, steps, device)
        with torch.inference_mode():
            add(f"LeRobot diffusion (U-Net), {scheduler}-{steps}", measure_latency(
                lambda p=policy: p.predict_action_chunk(batch), **timing(steps)), steps)  # fmt: skip
    return rows


# --- the RLBench size ------------------------------------------------------------------------------


def rlbench_frames(episode_dir: Path | None, device: str) -> list[dict[str, torch.Tensor]]:
    """Every frame of one RLBench episode as `lerobot-eval` hands it to the preprocessor (batch of one); with
    no episode folder, 70 scenes of the `rlbench` env's fake backend (ray-cast, RLBench's camera layout)."""
    if episode_dir is None:
        return fake_rlbench_frames(device)
    if not (episode_dir / "low_dim_obs.pkl").exists():
        raise FileNotFoundError(
            f"{episode_dir} is not an RLBench episode folder (no low_dim_obs.pkl); pass --episode <.../episodeN>, "
            "or --episode fake for the env's fake backend."
        )
    _, episodes = discover_episodes(episode_dir.parents[2])
    episode = next(e for e in episodes if e.path.resolve() == episode_dir.resolve())
    arrays = read_episode(episode, RLBENCH_CAMERAS)
    frames = [arrays.observation(t, RLBENCH_CAMERAS) for t in range(arrays.num_frames)]
    return [{k: v.to(device) for k, v in frame.items()} for frame in frames]


def fake_rlbench_frames(device: str, count: int = 70) -> list[dict[str, torch.Tensor]]:
    """Frames of the fake backend, one seeded scene each, mapped to the policy's keys as the env config does."""
    frames = []
    with RLBenchEnv(cameras=list(RLBENCH_CAMERAS), image_size=128, backend="fake") as env:
        for seed in range(count):
            obs, _ = env.reset(seed=seed)
            frame = {OBS_STATE: torch.from_numpy(obs["agent_pos"][None]).float()}
            for cam in RLBENCH_CAMERAS:
                frame[rgb_key(cam)] = torch.from_numpy(obs["pixels"][cam]).permute(2, 0, 1)[None].float() / 255.0
                frame[depth_key(cam)] = torch.from_numpy(obs[f"depth.{cam}"][None]).float()
                frame[intrinsics_key(cam)] = torch.from_numpy(obs[f"camera.{cam}.intrinsics"][None]).float()
                frame[extrinsics_key(cam)] = torch.from_numpy(obs[f"camera.{cam}.extrinsics"][None]).float()
            frames.append({k: v.to(device) for k, v in frame.items()})
    return frames


def rlbench_features() -> tuple[dict[str, PolicyFeature], dict[str, PolicyFeature]]:
    inputs = {OBS_STATE: PolicyFeature(FeatureType.STATE, (len(STATE_NAMES),))}
    for cam in RLBENCH_CAMERAS:
        inputs[rgb_key(cam)] = PolicyFeature(FeatureType.VISUAL, (3, 128, 128))
        inputs[depth_key(cam)] = PolicyFeature(FeatureType.STATE, (1, 128, 128))
        inputs[intrinsics_key(cam)] = PolicyFeature(FeatureType.STATE, (3, 3))
        inputs[extrinsics_key(cam)] = PolicyFeature(FeatureType.STATE, (4, 4))
    return inputs, {ACTION: PolicyFeature(FeatureType.ACTION, (8,))}


def rlbench_stats() -> dict[str, dict[str, torch.Tensor]]:
    stats = {
        key: {"min": -torch.ones(n), "max": torch.ones(n)} for key, n in ((OBS_STATE, len(STATE_NAMES)), (ACTION, 8))
    }
    for cam in RLBENCH_CAMERAS:
        stats[rgb_key(cam)] = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)}
    return stats


def rlbench_policy(policy_type: str, device: str, **kwargs):
    """A policy and its processors built the way `lerobot-train` / `lerobot-eval` build them."""
    inputs, outputs = rlbench_features()
    if policy_type == "diffusion":
        inputs = {k: v for k, v in inputs.items() if k == OBS_STATE or v.type is FeatureType.VISUAL}
    else:
        kwargs.setdefault("encoder", EncoderConfig(vision_backbone="resnet18"))
        kwargs.setdefault(
            "pointcloud",
            {
                "cameras": list(RLBENCH_CAMERAS),
                "num_points": 1024,
                "bounds_low": list(DEFAULT_BOUNDS_LOW),
                "bounds_high": list(DEFAULT_BOUNDS_HIGH),
            },
        )
    if isinstance(kwargs.get("pointcloud"), dict):
        kwargs["pointcloud"] = PointCloudConfig(**kwargs["pointcloud"])
    config = make_policy_config(policy_type, device=device, input_features=inputs, output_features=outputs, **kwargs)
    with torch.inference_mode(False):  # even when called inside it: see `run`
        policy = get_policy_class(policy_type)(config).to(device).eval()
    pre, post = make_pre_post_processors(config, dataset_stats=rlbench_stats())
    return policy, pre, post


def rollout_latency(policy, pre, post, frames, replans: int, warmup_replans: int = 1) -> dict[str, LatencyStats]:
    """End-to-end step time (preprocessor + select_action + postprocessor) over a rollout of real frames, split
    into the steps that re-plan and those that only pop a queued action."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    replan_times, other_times = [], []
    policy.reset()
    step = 0
    period = policy.config.n_action_steps
    total = (replans + warmup_replans) * period
    with torch.inference_mode():
        while step < total:
            frame = frames[step % len(frames)]
            replanning = step % period == 0
            sync()
            start = time.perf_counter()
            post(policy.select_action(pre(dict(frame))))
            sync()
            elapsed = (time.perf_counter() - start) * 1000.0
            if step >= warmup_replans * period and step > 0:
                (replan_times if replanning else other_times).append(elapsed)
            step += 1
    return {"replan": _stats(replan_times), "between": _stats(other_times)}


def _stats(times: list[float]) -> LatencyStats:
    p10, p50, p90 = np.percentile(times, [10, 50, 90])
    return LatencyStats(median_ms=float(p50), p10_ms=float(p10), p90_ms=float(p90), repeats=len(times))


def time_network(label: str, network: NetworkConfig, args, frames, add, timing, replans: int) -> None:
    """The student and teacher rows of one generator network."""
    device = args.device
    student, pre, post = rlbench_policy("imle_student", device, network=network)
    teacher, t_pre, t_post = rlbench_policy("flowstep_teacher", device, network=network)
    batch = pre(dict(frames[0]))
    frame = {k: batch[k] for k in student.encoder.input_keys}
    cond = student.encoder.fuse_steps(
        student.encoder.encode_frames(frame).unsqueeze(1).expand(-1, student.config.n_obs_steps, -1)
    )
    z = student.sample_noise(1, cond.device)
    bare_encoder = measure_latency(lambda: student.encoder.encode_frames(frame), **timing())
    bare_generator = measure_latency(lambda: student.generate(cond, z), **timing())
    add(f"student ({label}), bare generator forward", bare_generator, stage="generator", network=label)
    history = {k: v.unsqueeze(1).expand(-1, student.config.n_obs_steps, *v.shape[1:]) for k, v in frame.items()}
    student.config.num_inference_candidates = 1
    full = measure_latency(lambda: student.predict_action_chunk(history), **timing())
    add(f"student ({label}), predict_action_chunk, full history, 1 sample", full, network=label)
    for candidates in (1, args.default_candidates):
        student.config.num_inference_candidates = candidates
        stats = rollout_latency(student, pre, post, frames, replans)
        name = f"student ({label}), end-to-end re-plan, {candidates} cand."
        bare = {"encoder_ms": bare_encoder.median_ms, "generator_ms": bare_generator.median_ms}
        add(name, stats["replan"], network=label, candidates=candidates, **bare)
        add(f"student ({label}), end-to-end step between re-plans", stats["between"], network=label)
    for steps in (10, 50):
        teacher.config.num_inference_steps = steps
        generator = measure_latency(lambda s=steps: teacher.generate(cond, z, num_steps=s), **timing(steps))
        add(f"teacher ({label}), generator, {steps} Euler steps", generator, network=label)
        stats = rollout_latency(teacher, t_pre, t_post, frames, max(3, replans // (steps // 10)))
        add(f"teacher ({label}), end-to-end re-plan, {steps} Euler steps", stats["replan"], network=label)


def run_rlbench(args: argparse.Namespace) -> list[dict]:
    device = args.device
    episode = None if args.episode == "fake" else Path(args.episode)
    if episode is not None and not episode.exists() and args.episode == str(RLBENCH_EPISODE):
        print(f"{episode} is absent (the shared demos are not beside this clone): timing the fake backend's scenes")
        episode = None
    frames = rlbench_frames(episode, device)
    print(f"frames: {'the fake backend' if episode is None else episode} ({len(frames)})")
    rows: list[dict] = []

    def add(name: str, stats: LatencyStats, **extra) -> None:
        rows.append({"method": name, **extra, **stats.as_dict()})
        print(f"{name:<62}{stats}  ({stats.hz:,.1f} Hz)", flush=True)

    def timing(nfe: int = 1) -> dict:
        return {"warmup": max(2, args.warmup // (10 * nfe)), "repeats": max(10, args.repeats // (4 * nfe))}

    replans = max(5, args.repeats // 20)
    networks = {"MLP": NetworkConfig(), "U-Net": NetworkConfig(type="unet", down_dims=UNET_DIMS)}
    with torch.inference_mode():
        # Stages, on the student (the teacher's encoder and processors are the same).
        student, pre, post = rlbench_policy("imle_student", device, network=networks["MLP"])
        # The frames are already batched and on the device, which is what the step receives in the pipeline.
        pc_step = next(s for s in pre.steps if type(s).__name__ == "PointCloudProcessorStep")
        # Over the episode's frames in turn: the sampler's cost depends on the scene.
        cycle = itertools.cycle(frames)
        pc_stats = measure_latency(lambda: pc_step.observation(dict(next(cycle))), **timing())
        add("point-cloud step (4 cameras -> 1,024 points)", pc_stats, stage="pointcloud")
        pre_stats = measure_latency(lambda: pre(dict(next(cycle))), **timing())
        add("policy preprocessor (whole pipeline)", pre_stats, stage="preprocessor")
        batch = pre(dict(frames[0]))
        frame = {k: batch[k] for k in student.encoder.input_keys}
        encoder_stats = measure_latency(lambda: student.encoder.encode_frames(frame), **timing())
        add("encoder, one new frame (4 x ResNet-18 in one call + PointNet)", encoder_stats, stage="encoder")
        history = {k: v.unsqueeze(1).expand(-1, student.config.n_obs_steps, *v.shape[1:]) for k, v in frame.items()}
        chunk = student.predict_action_chunk(history)
        add("postprocessor", measure_latency(lambda: post(chunk[:, 0]), **timing()), stage="postprocessor")

        for label, network in networks.items():
            time_network(label, network, args, frames, add, timing, replans)
        # No ImageNet weights: nothing is downloaded, and latency does not depend on them.
        diffusion_settings = {
            "noise_scheduler_type": "DDIM",
            "num_inference_steps": 10,
            "down_dims": UNET_DIMS,
            "pretrained_backbone_weights": None,
        }
        diffusion_policy, d_pre, d_post = rlbench_policy("diffusion", device, **diffusion_settings)
        stats = rollout_latency(diffusion_policy, d_pre, d_post, frames, replans)
        add("LeRobot diffusion (U-Net, RGB + state), end-to-end re-plan, DDIM-10", stats["replan"], network="U-Net")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("embedded", "rlbench"), default="embedded")
    parser.add_argument(
        "--episode",
        default=str(RLBENCH_EPISODE),
        help="RLBench episode folder, or 'fake' for the rlbench env's fake backend (--task rlbench)",
    )
    parser.add_argument(
        "--default-candidates", type=int, default=16, help="the student's default candidate count (--task rlbench)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=8, help="student candidates drawn in one batched pass")
    parser.add_argument("--teacher-path")
    parser.add_argument("--student-path")
    parser.add_argument("--output", help="write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device: {args.device} ({device_name}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.task == "rlbench":
        print(f"{'stage / method':<62}median ms [p10, p90]")
        rows = run_rlbench(args)
    else:
        print(f"{'method':<44}{'NFE':>5}  median [p10, p90]")
        rows = run(args)
    if args.output:
        with open(args.output, "w") as f:
            meta = {"task": args.task, "device": args.device, "device_name": device_name}
            json.dump({**meta, "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
