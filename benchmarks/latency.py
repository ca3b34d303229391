"""Chunk latency at batch 1: the one-step student against its teacher and LeRobot's diffusion policy.

All policies are built in this one process for the embedded task's observations (state + environment
state, horizon 16, 2 observation steps) and timed the same way after warm-up: `predict_action_chunk` on an
already preprocessed observation. Latency does not depend on the weights, so untrained networks are
timed unless checkpoints are given.

    uv run python benchmarks/latency.py                       # the table of BENCHMARKS.md
    uv run python benchmarks/latency.py --device cuda         # on a GPU
    uv run python benchmarks/latency.py --student-path outputs/demo/student/pretrained_model \
        --teacher-path outputs/demo/teacher/pretrained_model
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

from lerobot_flowstep.latency import LatencyStats, measure_latency
from lerobot_flowstep.networks import NetworkConfig
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import FlowstepTeacherConfig
from lerobot_flowstep.policies.flowstep_teacher.modeling_flowstep_teacher import FlowstepTeacherPolicy
from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig
from lerobot_flowstep.policies.imle_student.modeling_imle_student import ImleStudentPolicy

UNET_DIMS = (128, 256, 512)


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
        student = ImleStudentPolicy(
            ImleStudentConfig(
                device=device, objective="regression", input_features=inputs, output_features=outputs, network=network
            )
        )
        student.config.objective = "imle"  # regression only skipped the teacher; time the stochastic path
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

    with torch.inference_mode():
        for label, network in (("MLP", NetworkConfig()), ("U-Net", NetworkConfig(type="unet", down_dims=UNET_DIMS))):
            use_paths = label == "MLP"
            teacher, student = flowstep_pair(
                network, device, args.teacher_path if use_paths else None, args.student_path if use_paths else None
            )
            cond = student.encode(batch)
            z = student.sample_noise(1, torch.device(device))
            t0 = torch.zeros(1, device=device)
            add(f"student ({label}), bare generator forward", measure_latency(
                lambda s=student, c=cond, z=z, t=t0: s.generator(z, t, c), **timing()), 1)  # fmt: skip
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
            add(f"LeRobot diffusion (U-Net), {scheduler}-{steps}", measure_latency(
                lambda p=policy: p.predict_action_chunk(batch), **timing(steps)), steps)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    print(f"{'method':<44}{'NFE':>5}  median [p10, p90]")
    rows = run(args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"device": args.device, "device_name": device_name, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
