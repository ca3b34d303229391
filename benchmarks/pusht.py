"""PushT from the original demonstrations: teacher vs student vs LeRobot's diffusion policy, and why the student
trails its teacher (the distillation diagnosis).

1. `data/...replay.zarr` -> LeRobotDataset with the keys of LeRobot's `pusht` env in its keypoint variant
   (`observation.state` = agent xy, `observation.environment_state` = the 8 block corners);
2. training from `configs/pusht/{teacher,student,diffusion}.json` (the same files `lerobot-train
   --config_path=...` takes), with their steps, batch sizes and episodes, from samples read once through
   `LeRobotDataset` and drawn as `lerobot-train` draws them (`lerobot_flowstep.tools.training`); the student
   is distilled from the teacher's cached samples and saved every `--save-every` steps. A second teacher is
   trained at the diffusion policy's budget, for the equal-budget comparison;
3. the diagnosis, on frames of the episodes the configs hold out: Chamfer coverage and fidelity of samples
   against accurate teacher samples, for every saved student checkpoint, the teacher's deployed sampler and
   one-step CFM (`diagnosis.json`, `distillation.png`), their paired error by distance to the nearest trained
   frame (`error_by_distance.png`), and the success of every saved student checkpoint;
4. every evaluation is a `lerobot-eval --env.type=pusht` run on the same seeded episodes (`--eval-episodes`
   for the headline rows): success rate (Wilson 95 % interval) and mean max reward (gym-pusht's reward is
   coverage / 0.95 capped at 1; normal 95 % interval), plus chunk latency at batch 1;
5. the disturbance test: `lerobot-eval --env.type=flowstep_pusht_disturbed`, the block pushed to a random
   pose before action `--disturb-step` and only the rest of the episode scored, each policy re-planning as
   often as its measured latency allows at 10 Hz (every ceil(latency / 100 ms) actions) and as trained, with
   and without the push.

`--models` picks what to train and evaluate; `teacher_unet` (the CFM teacher on the diffusion policy's U-Net,
~1 h of training on a 2-core CPU) is best left to a GPU. `--extra-eval RUN FIELD=VALUE ...` evaluates a trained
run folder with other inference settings on `--curve-episodes` episodes (a pilot before a 500-episode row);
`--models` with no names runs only those.

`--teacher-config teacher_unet` makes the U-Net teacher the one the student distils (a U-Net student, since the
student inherits its teacher's network), in its own `--output`; `--device cuda` runs training, the cache, the
diagnosis, evaluation and latency on a GPU.

Every stage skips work whose output exists (checkpoints, the cache, `diagnosis.json` entries,
`eval_info.json`), so an interrupted run resumes; within a stage, training resumes from its last resume point
(`--resume-every` steps) and the teacher cache from its last shard (`--cache-shard-size` frames). The cache can
be drawn on two cores by running the command twice with `--cache-only`, and planned with `--cache-plan N`
(the cost per frame and the ETA of the whole cache, from N timed batches).

    uv run python benchmarks/pusht.py --zarr ../shared/data/pusht/pusht_cchi_v7_replay.zarr
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lerobot.configs import PreTrainedConfig
from lerobot.configs.train import TrainPipelineConfig
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot.envs.configs import PushtEnv
from lerobot.envs.factory import make_env
from lerobot.envs.utils import preprocess_observation
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from lerobot_flowstep.core.flow_matching import SOLVERS
from lerobot_flowstep.datasets.zarr import convert_zarr
from lerobot_flowstep.policies.imle_student.teacher_cache import cache_has_latents
from lerobot_flowstep.tools.cache_teacher import cache_from_samples, memory_frames, plan_cache
from lerobot_flowstep.tools.checkpoints import load_checkpoint
from lerobot_flowstep.tools.diagnostics import (
    MemoizedTeacher,
    held_out_batch,
    nearest_distances,
    paired_error_by_distance,
    paired_errors,
    sample_chamfer,
)
from lerobot_flowstep.tools.latency import chunk_latency, replan_period
from lerobot_flowstep.tools.lerobot_commands import eval_args, lerobot_eval
from lerobot_flowstep.tools.plots import (
    plot_benchmark,
    plot_distillation_curves,
    plot_error_by_distance,
    plot_recipe_variants,
    plot_success_against_paired_error,
)
from lerobot_flowstep.tools.statistics import mean_interval, wilson_interval
from lerobot_flowstep.tools.timings import record_timing, write_text_atomic
from lerobot_flowstep.tools.training import load_samples, save_checkpoint, train_policy_on_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pusht"
OBS_TYPE = "environment_state_agent_pos"
# teacher_equal_budget: the teacher's config at the diffusion policy's steps and batch size; teacher_unet: the
# teacher with the diffusion policy's U-Net, steps and batch size (CFM vs DDPM on the same network and budget).
MODELS = ("teacher", "student", "teacher_equal_budget", "teacher_unet", "diffusion")
CONTROL_HZ = 10.0


@dataclass
class Evaluation:
    """One `lerobot-eval` run of one checkpoint."""

    name: str
    model: str
    policy_args: dict[str, object] = field(default_factory=dict)
    disturbed: bool = False


def train_config(configs: Path, name: str, output: Path, device: str, *overrides: str) -> TrainPipelineConfig:
    cli_args = [f"--dataset.root={output / 'pusht_keypoints'}", f"--policy.device={device}", *overrides]
    return TrainPipelineConfig.from_pretrained(configs / f"{name}.json", cli_args=cli_args)


def cached_samples(output: Path, cfg: TrainPipelineConfig, meta: LeRobotDatasetMetadata) -> dict[str, torch.Tensor]:
    """All training samples, read through LeRobotDataset once (minutes here) and kept next to the dataset."""
    path = output / "samples.safetensors"
    key = json.dumps(resolve_delta_timestamps(cfg.policy, meta), sort_keys=True)
    if path.exists():
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            if f.metadata().get("delta_timestamps") == key:
                return load_file(path)
    samples = load_samples(cfg.dataset.repo_id, Path(cfg.dataset.root), cfg.policy, meta)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in samples.items()}, tmp, metadata={"delta_timestamps": key})
    tmp.replace(path)
    return samples


def train(
    cfg: TrainPipelineConfig, run_dir: Path, samples: dict, label: str, save_every: int = 0, resume_every: int = 0
) -> Path:
    """Train (unless done) and return the checkpoint, at the path lerobot-train would give it; the wall time
    goes to `run_dir/timings.json` (of the last session only, when the run was resumed).

    With `resume_every`, the training state is kept in `run_dir/resume` every that many steps, and a killed
    run continues from it (`train_policy_on_dataset`).

    With `save_every`, intermediate checkpoints go where lerobot-train writes them
    (`checkpoints/<step>/pretrained_model`), for the curves against training steps.
    """
    checkpoint = run_dir / "checkpoints" / "last" / "pretrained_model"
    if not (checkpoint / "model.safetensors").exists():
        start = time.perf_counter()
        config, root = cfg.policy, Path(cfg.dataset.root)

        def save_intermediate(step: int, policy, preprocessor, postprocessor) -> None:
            if save_every and step % save_every == 0 and step < cfg.steps:
                save_checkpoint(policy, preprocessor, postprocessor, intermediate_checkpoint(run_dir, step))

        _, checkpoint, losses = train_policy_on_dataset(
            config, cfg.dataset.repo_id, root, checkpoint.parent, cfg.steps, cfg.batch_size, cfg.seed, label,
            samples, cfg.dataset.episodes, save_intermediate, run_dir / "resume", resume_every,
        )  # fmt: skip
        record_timing(run_dir, f"{label}_train_s", time.perf_counter() - start)
        (run_dir / "losses.json").write_text(json.dumps(losses))
    return checkpoint


def intermediate_checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{step:06d}" / "pretrained_model"


def pusht_chunk_latency(
    checkpoint: Path, path: Path, remeasure: bool = False, device: str = "cpu", **overrides
) -> dict:
    """Batch-1 chunk latency on a PushT observation, with the checkpoint's processors, measured once and kept
    at `path`: measured again on every run, it would follow the machine's load of the moment, not the model."""
    if path.is_file() and not remeasure:
        return json.loads(path.read_text())
    policy, preprocessor, _ = load_checkpoint(checkpoint, device, **overrides)
    env_cfg = PushtEnv(obs_type=OBS_TYPE)
    env = make_env(env_cfg, n_envs=1)[env_cfg.type][0]
    try:
        obs, _ = env.reset(seed=0)
    finally:
        env.close()
    batch = preprocessor(preprocess_observation(obs))
    # 200 calls: 50 of a ~1 ms call swing by 30 % between passes on a shared 2-core VM.
    stats = chunk_latency(policy, batch, warmup=20, repeats=200).as_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(stats))
    return stats


def run_key(model: str, policy_args: dict) -> list[str]:
    """What is evaluated or timed, as name parts: the checkpoint and its policy settings."""
    return [model, *(f"{k}={v}" for k, v in sorted(policy_args.items()))]


def file_name(parts: list[str]) -> str:
    """The parts joined into one file or folder name, hashed down when they would pass the file system's
    255-byte limit with a suffix (recipe variants name their runs by every field they set); shorter names,
    which every earlier run's outputs have, are kept as they are so that those outputs are still found."""
    name = "_".join(parts)
    if len(name.encode()) <= 250:
        return name
    return f"{name[:200]}_{hashlib.sha1(name.encode()).hexdigest()[:12]}"


def latency_path(output: Path, model: str, policy_args: dict) -> Path:
    return output / "latency" / (file_name(run_key(model, policy_args)) + ".json")


def run_eval(
    evaluation: Evaluation, checkpoint: Path, output: Path, args: argparse.Namespace, latency: dict, episodes: int
) -> dict:
    # Keyed by what is evaluated, not by the display name, so that a resumed run never reuses another result.
    parts = [*run_key(evaluation.model, evaluation.policy_args), f"{episodes}ep"]
    parts += ["disturbed"] if evaluation.disturbed else []
    out_dir = output / "eval" / file_name(parts)
    if not (out_dir / "eval_info.json").exists():
        extra = [f"--env.obs_type={OBS_TYPE}", *(f"--policy.{k}={v}" for k, v in evaluation.policy_args.items())]
        if evaluation.disturbed:
            extra.append(f"--env.disturb_step={args.disturb_step}")
        env_type = "flowstep_pusht_disturbed" if evaluation.disturbed else "pusht"
        cli = eval_args(checkpoint, env_type, episodes, args.eval_batch_size, args.eval_seed, args.device) + extra
        threads = {"OMP_NUM_THREADS": str(args.threads)}
        # Not with_suffix: a run name with a decimal (observation_noise_std0.1) would lose everything after its dot,
        # and every such evaluation would write one log.
        log = out_dir.with_name(f"{out_dir.name}.log")
        lerobot_eval(cli, out_dir, log, desc=evaluation.name, env=threads)
    info = json.loads((out_dir / "eval_info.json").read_text())
    metrics = info["per_task"][0]["metrics"]
    successes = np.array(metrics["successes"], dtype=bool)
    max_rewards = np.array(metrics["max_rewards"], dtype=np.float64)
    return {
        "model": evaluation.model,
        "policy_args": evaluation.policy_args,
        "disturbed": evaluation.disturbed,
        "episodes": len(successes),
        "success_rate": float(successes.mean()),
        "success_ci95": wilson_interval(int(successes.sum()), len(successes)),
        "mean_max_reward": float(max_rewards.mean()),
        "mean_max_reward_ci95": mean_interval(max_rewards),
        "chunk_latency": latency,
        "eval_dir": str(out_dir),
    }


def read_report(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def parse_value(text: str) -> object:
    """A command-line policy field as the config holds it: a number or boolean as such, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def markdown_table(results: dict[str, dict]) -> str:
    lines = [
        "| method | success [95% CI] | mean max reward [95% CI] | chunk latency (ms) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lo, hi = r["success_ci95"]
        rlo, rhi = r["mean_max_reward_ci95"]
        latency = r["chunk_latency"].get("median_ms")
        lines.append(
            f"| {name} | {r['success_rate']:.1%} [{lo:.1%}, {hi:.1%}] | {r['mean_max_reward']:.3f} "
            f"[{rlo:.3f}, {rhi:.3f}] | {'' if latency is None else f'{latency:.2f}'} |"
        )
    return "\n".join(lines)


def diagnose_distillation(
    output: Path,
    checkpoints: dict[str, Path],
    student_dir: Path,
    student_steps: list[int],
    held_out: list[int],
    cfg: TrainPipelineConfig,
    args: argparse.Namespace,
    samples: dict[str, torch.Tensor],
) -> dict:
    """Chamfer coverage and fidelity, against accurate teacher samples (the cache's solver and steps), on frames
    of the held-out episodes: for the student at each saved distillation step (step 0 is its initialization,
    which is exactly one-step CFM), the teacher's deployed sampler, one-step CFM, and a second independent
    draw of the reference itself (the floor: what a perfect copy of the teacher would score). Each also gets
    its paired error against the deployed sampler (`paired_errors`: the same latents through both), on those
    frames and on frames of the trained episodes, with fresh latents, and the held-out error in four bins of
    the frames' distance to the nearest trained frame (`samples`, normalized observations)."""
    path = output / "diagnosis.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    settings = {
        "reference": f"teacher, {args.reference_steps} Heun steps",
        "held_out_episodes": held_out,
        "frames": args.diagnosis_frames,
        "samples_per_frame": args.diagnosis_samples,
    }
    if report.get("settings") != settings:
        report = {"settings": settings, "references": {}}
    teacher, preprocessor, _ = load_checkpoint(checkpoints["teacher"], args.device)
    # Every policy is measured against the same teacher samples (same frames, latents and seeds): drawn once.
    teacher = MemoizedTeacher(teacher)
    batch = held_out_batch(
        teacher.config, preprocessor, cfg.dataset.repo_id, cfg.dataset.root, held_out, args.diagnosis_frames
    )
    reference = {"num_steps": args.reference_steps, "solver": "heun"}

    def measure(policy, known: dict | None) -> dict:
        """The measurements `known` (an entry of an earlier run) lacks, added to it."""
        known = dict(known or {})
        if "coverage" not in known:
            known |= sample_chamfer(policy, teacher, batch, args.diagnosis_samples, seed=0, **reference)
        if not {"paired_error_deployed", "paired_error_by_distance"} <= known.keys():
            errors = paired_errors(policy, teacher, batch, args.diagnosis_samples, seed=0)
            known.setdefault("paired_error_deployed", errors.mean().item())
            known["paired_error_by_distance"] = paired_error_by_distance(errors, distances())
        if "paired_error_train" not in known:
            errors = paired_errors(policy, teacher, train_batch(), args.diagnosis_samples, seed=0)
            known["paired_error_train"] = errors.mean().item()
        if "paired_error_executed" not in known:
            # Over the executed actions only: the whole-chunk mean stopped ranking the students (run 5).
            errors = paired_errors(policy, teacher, batch, args.diagnosis_samples, seed=0, executed_only=True)
            known["paired_error_executed"] = errors.mean().item()
        return known

    @functools.cache
    def distances() -> torch.Tensor:
        # Of each held-out frame's observation (its whole history, normalized) to the nearest trained frame's.
        keys = teacher.encoder.vector_keys
        trained = torch.isin(samples["episode_index"], torch.tensor(list(cfg.dataset.episodes)))
        observations = preprocessor({k: samples[k][trained] for k in keys})

        def flat(frames: dict) -> torch.Tensor:
            return torch.cat([frames[k].flatten(1) for k in keys], dim=1)

        return nearest_distances(flat(batch), flat(observations))

    @functools.cache
    def train_batch() -> dict:
        # Frames the student was distilled on, with fresh latents: against the held-out error, it tells a map
        # that fails to generalise across observations from one that memorised its cached latents.
        # (The diagnosis runs only when the config holds episodes out, so it lists the trained ones.)
        episodes = list(cfg.dataset.episodes)
        return held_out_batch(
            teacher.config, preprocessor, cfg.dataset.repo_id, cfg.dataset.root, episodes, args.diagnosis_frames
        )

    def missing(section: str, key: str) -> bool:
        entry = report.get(section, {}).get(key, {})
        wanted = {"paired_error_deployed", "paired_error_train", "paired_error_by_distance", "paired_error_executed"}
        return not wanted <= entry.keys()

    def save(section: str, key: str, value: dict) -> None:
        # Merged into the file as it is now: a concurrent run (another recipe variant) may have added entries.
        nonlocal report
        current = json.loads(path.read_text()) if path.exists() else {}
        if current.get("settings") == settings:
            report = current | {"references": current.get("references", {}) | report["references"]}
        report.setdefault(section, {})[key] = value
        write_text_atomic(path, json.dumps(report, indent=2))

    config = teacher.config
    variants = {
        f"teacher, {config.num_inference_steps} {config.ode_solver.capitalize()} steps (deployed)": {},
        "one-step CFM (teacher, 1 Euler step)": {"num_inference_steps": 1, "ode_solver": "euler"},
        f"floor: a second draw of the reference ({args.reference_steps} Heun)": {
            "num_inference_steps": args.reference_steps,
            "ode_solver": "heun",
        },
    }
    # The teacher with fewer steps: how far from its deployed map a sampler may land and still work.
    for steps in args.diagnosis_teacher_steps:
        variants[f"teacher, {steps} {config.ode_solver.capitalize()} steps"] = {"num_inference_steps": steps}
    for name, overrides in variants.items():
        if missing("references", name):
            policy = load_checkpoint(checkpoints["teacher"], args.device, **overrides)[0]
            save("references", name, measure(policy, report["references"].get(name)))
    for step in tqdm(student_steps, desc=f"diagnose {student_dir.name} checkpoints"):
        if missing(student_dir.name, str(step)):
            if step == 0:  # the student's initialization: the teacher's one-step Euler sampler, by construction
                one_step = {"num_inference_steps": 1, "ode_solver": "euler"}
                policy = load_checkpoint(checkpoints["teacher"], args.device, **one_step)[0]
            else:
                policy = load_checkpoint(student_checkpoint(student_dir, step, cfg.steps), args.device)[0]
            save(student_dir.name, str(step), measure(policy, report.get(student_dir.name, {}).get(str(step))))
    return report


def student_curves(diagnosis: dict) -> dict[str, dict[int, dict]]:
    """Each student run's measurements in `diagnosis.json`, by distillation step."""
    return {
        name: {int(step): r for step, r in curve.items()}
        for name, curve in diagnosis.items()
        if name not in ("settings", "references")
    }


def success_against_error(report: dict, diagnosis: dict) -> dict[str, dict]:
    """Every sampler with both a paired error (`diagnosis.json`) and a one-sample success (`report.json`): each
    student at its last step (its `(1 sample)` row), one-step CFM, and the teacher at fewer steps (its
    `--extra-eval teacher num_inference_steps=K` row)."""
    successes = report.get("results", {}) | report.get("extra", {})
    points = {}
    for name, curve in student_curves(diagnosis).items():
        tag = f" [{name.removeprefix('student_')}]" if name != "student" else ""
        row = successes.get(f"student{tag} (1 sample)")
        if row is not None:
            points[name] = curve[max(curve)] | {**row, "teacher_sampler": False}
    for name, reference in diagnosis["references"].items():
        steps = re.fullmatch(r"teacher, (\d+) \w+ steps", name)
        row = successes.get(name) or (steps and successes.get(f"teacher (num_inference_steps={steps[1]})"))
        if row and reference.get("paired_error_deployed", 0) > 0:
            points[name] = reference | {**row, "teacher_sampler": True}
    return points


def student_checkpoint(run_dir: Path, step: int, total_steps: int) -> Path:
    if step == total_steps:
        return run_dir / "checkpoints" / "last" / "pretrained_model"
    return intermediate_checkpoint(run_dir, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zarr", required=True, help="pusht_cchi_v7_replay.zarr")
    parser.add_argument("--output", default="outputs/pusht")
    parser.add_argument("--configs", type=Path, default=CONFIGS, help="folder of teacher/student/diffusion.json")
    parser.add_argument(
        "--cache-samples",
        type=int,
        default=16,
        help="teacher samples cached per frame; also the student's num_teacher_samples unless --student-arg sets "
        "it lower, when each step draws that many of them at random",
    )
    parser.add_argument("--cache-steps", type=int, default=10, help="ODE steps per cached teacher sample")
    parser.add_argument("--cache-solver", choices=SOLVERS, default="heun", help="ODE solver of the cached samples")
    parser.add_argument(
        "--cache-shard-size",
        type=int,
        default=1024,
        help="frames per cache shard: each is written as soon as it is drawn, so a killed run loses at most one",
    )
    parser.add_argument("--cache-batch-size", type=int, default=512, help="frames per teacher call in the cache")
    parser.add_argument(
        "--cache-only",
        action="store_true",
        help="stop once the cache is drawn: run the same command twice with it to draw the cache on two cores "
        "(each process claims the next free shard), then once without it",
    )
    parser.add_argument(
        "--cache-plan",
        type=int,
        default=0,
        metavar="BATCHES",
        help="time this many cache batches (after a warm-up one), print the cost per frame and the cache's ETA, "
        "and stop; writes nothing",
    )
    parser.add_argument(
        "--resume-every",
        type=int,
        default=500,
        help="training steps between resume points (weights, optimizer, scheduler, RNG): a killed run continues "
        "from the last one; 0: none",
    )
    parser.add_argument(
        "--perturbed-cache-samples",
        type=int,
        default=0,
        help="also cache this many teacher samples per frame, each at its own copy of the frame's observation "
        "perturbed by --perturbed-cache-std, and distil on them (the observation-noise term without the teacher "
        "in the loop; --student-arg num_perturbed_samples=k uses k of them per step); 0: none",
    )
    parser.add_argument(
        "--perturbed-cache-std", type=float, default=0.1, help="observation noise of the perturbed cache (normalized)"
    )
    parser.add_argument("--student-steps", type=int, help="distillation steps (default: the student config's)")
    parser.add_argument(
        "--student-arg",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a student policy field for a recipe variant, e.g. energy_weight=1 (repeatable; own run folder)",
    )
    parser.add_argument("--reference-steps", type=int, default=10, help="Heun steps of the diagnosis reference")
    parser.add_argument("--eval-episodes", type=int, default=500, help="episodes of each headline evaluation")
    parser.add_argument("--curve-episodes", type=int, default=100, help="episodes per point of the success curve")
    parser.add_argument("--eval-batch-size", type=int, default=50)
    parser.add_argument("--eval-seed", type=int, default=100_000)
    parser.add_argument("--save-every", type=int, default=4000, help="student steps between curve checkpoints")
    parser.add_argument("--diagnosis-frames", type=int, default=256, help="held-out frames for the Chamfer curves")
    parser.add_argument("--diagnosis-samples", type=int, default=32, help="samples per frame and policy")
    parser.add_argument(
        "--diagnosis-teacher-steps",
        type=int,
        nargs="*",
        default=[2, 3, 5],
        help="also diagnose the teacher at these numbers of its solver's steps (its paired error: how far from "
        "the deployed map a sampler lands)",
    )
    parser.add_argument("--disturb-step", type=int, default=100, help="action before which the block moves")
    parser.add_argument(
        "--models", nargs="*", choices=MODELS, default=list(MODELS), help="train and evaluate only these (resumable)"
    )
    parser.add_argument(
        "--extra-eval",
        nargs="+",
        action="append",
        default=[],
        metavar="RUN [FIELD=VALUE ...]",
        help="evaluate a trained run folder (teacher, student, student_energy_weight1, ...) with these policy "
        "fields on --curve-episodes episodes (repeatable)",
    )
    parser.add_argument("--no-ddpm", action="store_true", help="skip the slow DDPM-100 evaluation")
    parser.add_argument("--no-disturbance", action="store_true", help="skip the disturbance test")
    parser.add_argument("--no-eval", action="store_true", help="train, cache and diagnose only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--device", default="cpu", help="where training, the cache, the diagnosis, evaluation and latency run"
    )
    parser.add_argument(
        "--teacher-config",
        default="teacher",
        help="the config (in --configs) of the teacher the student distils, e.g. teacher_unet: the U-Net student "
        "of the U-Net teacher; a config other than the default needs its own --output",
    )
    parser.add_argument(
        "--remeasure-latency",
        action="store_true",
        help="measure chunk latency again (on a quiet machine) instead of reading output/latency/",
    )
    args = parser.parse_args()
    for arg in args.student_arg + [a for run, *fields in args.extra_eval for a in fields]:
        if "=" not in arg:
            parser.error(f"--student-arg and --extra-eval take FIELD=VALUE, got '{arg}'")
    torch.set_num_threads(args.threads)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    # Checked now, not after minutes of loading: the runs --extra-eval names must be trained already.
    trained = sorted(p.parents[3].name for p in output.glob("*/checkpoints/last/pretrained_model/model.safetensors"))
    for run in {run for run, *_ in args.extra_eval} - set(trained):
        parser.error(f"--extra-eval: no trained run '{run}' in {output}; trained runs: {trained}")
    report_path = output / "report.json"

    teacher_cfg = train_config(args.configs, args.teacher_config, output, args.device)
    root = Path(teacher_cfg.dataset.root)
    if not (root / "meta" / "info.json").exists():
        convert_zarr(args.zarr, root, mapping="pusht_keypoints", repo_id=teacher_cfg.dataset.repo_id)
    meta = LeRobotDatasetMetadata(teacher_cfg.dataset.repo_id, root=root)
    samples = cached_samples(output, teacher_cfg, meta)
    # The episodes no config trains on: the frames of the distillation diagnosis.
    held_out = sorted(set(range(meta.total_episodes)) - set(teacher_cfg.dataset.episodes or ()))

    diffusion_cfg = train_config(args.configs, "diffusion", output, args.device)
    # The teacher again, at the diffusion policy's steps and batch size: the equal-budget comparison.
    equal_budget = [f"--steps={diffusion_cfg.steps}", f"--batch_size={diffusion_cfg.batch_size}"]
    equal_cfg = train_config(args.configs, "teacher", output, args.device, *equal_budget)
    models = set(args.models)
    checkpoints = {}
    if models & {"teacher", "student"}:
        checkpoints["teacher"] = train(teacher_cfg, output / "teacher", samples, "teacher", 0, args.resume_every)
        trained_network = PreTrainedConfig.from_pretrained(checkpoints["teacher"]).network
        if trained_network != teacher_cfg.policy.network:
            # The run folders are named by role, so another teacher config in the same output would silently
            # reuse (and distil, and report as its own) the teacher already there.
            parser.error(
                f"{output / 'teacher'} holds a teacher with network {trained_network}, not "
                f"{args.teacher_config}.json's {teacher_cfg.policy.network}: give --teacher-config "
                f"{args.teacher_config} its own --output."
            )
    if "teacher_equal_budget" in models:
        run_dir = output / "teacher_equal_budget"
        checkpoints["teacher_equal_budget"] = train(
            equal_cfg, run_dir, samples, "teacher_equal_budget", 0, args.resume_every
        )
    if "teacher_unet" in models:
        unet_cfg = train_config(args.configs, "teacher_unet", output, args.device)
        checkpoints["teacher_unet"] = train(
            unet_cfg, output / "teacher_unet", samples, "teacher_unet", 0, args.resume_every
        )
    diagnosis, student_steps, student_name, variant = None, [], "student", ""
    if "student" in models:
        # The default recipe keeps the plain names; a variant (another cache sampler or budget) gets its own.
        cache_variant = (
            "" if (args.cache_solver, args.cache_steps) == ("heun", 10) else f"_{args.cache_solver}{args.cache_steps}"
        ) + ("" if args.cache_samples == 16 else f"_{args.cache_samples}samples")
        cache_path = output / "teacher" / f"teacher_samples{cache_variant}.safetensors"
        steps_override = [f"--steps={args.student_steps}"] if args.student_steps else []
        policy_overrides = [f"--policy.{arg}" for arg in args.student_arg]
        variant = cache_variant + (f"_{args.student_steps}steps" if args.student_steps else "")
        variant += "".join(f"_{arg.replace('=', '')}" for arg in args.student_arg)
        perturbed_path = None
        if args.perturbed_cache_samples:
            # The observation-noise term from a cache, drawn with the main cache's sampler: no teacher in the loop.
            perturbed = f"perturbed{args.perturbed_cache_std:g}x{args.perturbed_cache_samples}"
            perturbed_path = output / "teacher" / f"teacher_samples{cache_variant}_{perturbed}.safetensors"
            policy_overrides += [
                f"--policy.perturbed_cache_path={perturbed_path}",
                f"--policy.observation_noise_std={args.perturbed_cache_std}",
            ]
            variant += f"_{perturbed}"
        student_name = f"student{variant}"
        student_cfg = train_config(
            args.configs,
            "student",
            output,
            args.device,
            f"--policy.teacher_path={checkpoints['teacher']}",
            f"--policy.teacher_cache_path={cache_path}",
            f"--policy.num_teacher_samples={args.cache_samples}",
            *steps_override,
            *policy_overrides,
        )
        if args.cache_plan:
            teacher, _, _ = load_checkpoint(checkpoints["teacher"], args.device)
            frames = memory_frames(teacher, str(checkpoints["teacher"]), samples, args.cache_batch_size)
            plan_cache(
                teacher, frames, len(samples["index"]), args.cache_samples, args.cache_steps, args.cache_solver,
                args.cache_batch_size, args.cache_plan, teacher_cfg.seed,
            )  # fmt: skip
            return

        def draw(path: Path, num_samples: int, timing: str, observation_noise_std: float = 0.0) -> None:
            # Drawn by shards: a killed run resumes the cache (or a second process joins it) where it stopped.
            start = time.perf_counter()
            teacher, _, _ = load_checkpoint(checkpoints["teacher"], args.device)
            cache_from_samples(
                teacher, str(checkpoints["teacher"]), samples, path, num_samples, args.cache_steps, args.cache_solver,
                teacher_cfg.seed, args.cache_batch_size, dataset_meta=meta, shard_size=args.cache_shard_size,
                resume=True, observation_noise_std=observation_noise_std,
            )  # fmt: skip
            # This session's time: a resumed cache's earlier sessions are not in it.
            record_timing(output / "teacher", timing, time.perf_counter() - start)

        # A cache from before latents were kept is drawn again when paired distillation needs them.
        needs_latents = student_cfg.policy.paired_weight > 0
        if not cache_path.exists() or (needs_latents and not cache_has_latents(cache_path)):
            draw(cache_path, args.cache_samples, f"teacher_cache{cache_variant}_s")
        if perturbed_path is not None and not perturbed_path.exists():
            draw(
                perturbed_path, args.perturbed_cache_samples, f"teacher_cache{cache_variant}_{perturbed}_s",
                args.perturbed_cache_std,
            )  # fmt: skip
        if args.cache_only:
            drawn = [cache_path] + ([perturbed_path] if perturbed_path is not None else [])
            print(f"The cache is drawn: {', '.join(map(str, drawn))}")
            return
        student_dir = output / student_name
        checkpoints[student_name] = train(
            student_cfg, student_dir, samples, student_name, args.save_every, args.resume_every
        )
        student_steps = sorted({0, *range(args.save_every, student_cfg.steps, args.save_every), student_cfg.steps})
        if held_out:
            diagnosis = diagnose_distillation(
                output, checkpoints, student_dir, student_steps, held_out, student_cfg, args, samples
            )
            recipes = student_curves(diagnosis)
            if len(recipes) > 1:
                # Every variant starts as one-step CFM (step 0), so that reference line would add nothing.
                lines = {name: r for name, r in diagnosis["references"].items() if not name.startswith("one-step")}
                plot_recipe_variants(recipes, lines, output / "recipes.png")
            # Each variant's last checkpoint and the teacher's few-step samplers, by distance to the trained frames.
            # (The deployed sampler's own error is zero, and the floor is another draw, not the same latents.)
            last = {n: c[max(c)] for n, c in recipes.items()}
            binned = {
                n: r["paired_error_by_distance"]
                for n, r in {**diagnosis["references"], **last}.items()
                if "paired_error_by_distance" in r and min(r["paired_error_by_distance"]["errors"]) > 0
                and not n.startswith("floor")
            }  # fmt: skip
            plot_error_by_distance(binned, output / "error_by_distance.png")
        else:
            print("No held-out episodes (the configs train on all of them): the Chamfer curves are skipped.")
    if "diffusion" in models:
        diffusion_dir = output / "diffusion"
        checkpoints["diffusion"] = train(diffusion_cfg, diffusion_dir, samples, "diffusion", 0, args.resume_every)
    report = read_report(report_path)
    for name in checkpoints:
        timings_path = output / name / "timings.json"
        if timings_path.exists():
            report["timings_s"] = report.get("timings_s", {}) | json.loads(timings_path.read_text())
    if diagnosis is not None:
        report["diagnosis"] = diagnosis
    write_text_atomic(report_path, json.dumps(report, indent=2))
    if args.no_eval:
        return

    teacher_steps = f"{teacher_cfg.policy.num_inference_steps} {teacher_cfg.policy.ode_solver.capitalize()}"
    budget = f"{teacher_cfg.steps // 1000}k x {teacher_cfg.batch_size}"
    small = f"{diffusion_cfg.steps // 1000}k x {diffusion_cfg.batch_size}"
    teacher = Evaluation(f"teacher ({teacher_steps} steps), {budget}", "teacher")
    one_step = Evaluation("one-step CFM (teacher, 1 Euler step)", "teacher", {"num_inference_steps": 1})
    # The teacher as the cache samples it (the student's targets), against its deployed sampler.
    teacher_cache_sampler = Evaluation(
        f"teacher ({args.cache_steps} {args.cache_solver.capitalize()} steps, the cache's sampler)",
        "teacher",
        {"num_inference_steps": args.cache_steps, "ode_solver": args.cache_solver},
    )
    tag = f" [{student_name.removeprefix('student_')}]" if student_name != "student" else ""
    student = Evaluation(
        f"student{tag} (16 candidates, consistency rule)", student_name, {"candidate_selection": "consistency"}
    )
    student_density = Evaluation(
        f"student{tag} (16 candidates, density rule)", student_name, {"candidate_selection": "density"}
    )
    student_consistent_density = Evaluation(
        f"student{tag} (16 candidates, consistent_density rule)",
        student_name,
        {"candidate_selection": "consistent_density"},
    )
    student_1 = Evaluation(f"student{tag} (1 sample)", student_name, {"num_inference_candidates": 1})
    ddim = Evaluation(
        f"diffusion (DDIM-10), {small}", "diffusion", {"noise_scheduler_type": "DDIM", "num_inference_steps": 10}
    )
    teacher_small = Evaluation(f"teacher ({teacher_steps} steps), diffusion's budget {small}", "teacher_equal_budget")
    teacher_unet = Evaluation(f"teacher, U-Net ({teacher_steps} steps), {small}", "teacher_unet")
    evaluations = [teacher, one_step, student, student_density, student_consistent_density, student_1]
    evaluations += [teacher_small, teacher_unet, ddim]
    cache_sampler = (args.cache_steps, args.cache_solver)
    if cache_sampler != (teacher_cfg.policy.num_inference_steps, teacher_cfg.policy.ode_solver):
        evaluations.insert(1, teacher_cache_sampler)  # else it is the deployed teacher's row
    if not args.no_ddpm:
        evaluations.append(Evaluation(f"diffusion (DDPM-100), {small}", "diffusion"))

    latencies: dict[Path, dict] = {}

    def latency_of(evaluation: Evaluation) -> dict:
        # Held per path as well as on disk: with --remeasure-latency a model is still timed once per run.
        path = latency_path(output, evaluation.model, evaluation.policy_args)
        if path not in latencies:
            latencies[path] = pusht_chunk_latency(
                checkpoints[evaluation.model], path, args.remeasure_latency, args.device, **evaluation.policy_args
            )
        return latencies[path]

    evaluations = [e for e in evaluations if e.model in checkpoints]
    results = {
        e.name: run_eval(e, checkpoints[e.model], output, args, latency_of(e), args.eval_episodes) for e in evaluations
    }

    extra = {}
    for run, *fields in args.extra_eval:
        checkpoint = output / run / "checkpoints" / "last" / "pretrained_model"
        policy_args = dict(field.split("=", 1) for field in fields)
        evaluation = Evaluation(f"{run} ({', '.join(fields) or 'its config'})", run, policy_args)
        overrides = {k: parse_value(v) for k, v in policy_args.items()}
        path = latency_path(output, run, policy_args)
        latency = pusht_chunk_latency(checkpoint, path, args.remeasure_latency, args.device, **overrides)
        extra[evaluation.name] = run_eval(evaluation, checkpoint, output, args, latency, args.curve_episodes)

    # Success against distillation steps: every saved student checkpoint, one sample per chunk (the
    # distribution itself, no selection rule), on the first --curve-episodes seeds.
    curve = {}
    for step in student_steps[1:]:
        evaluation = Evaluation(
            f"{student_name} at step {step}", f"{student_name}_{step:06d}", {"num_inference_candidates": 1}
        )
        checkpoint = student_checkpoint(output / student_name, step, student_cfg.steps)
        curve[step] = run_eval(evaluation, checkpoint, output, args, {}, args.curve_episodes)
    if diagnosis is not None:
        success_references = {name: results[e.name] for name, e in (("teacher", teacher), ("one-step CFM", one_step))}
        references = {name: r for name, r in diagnosis["references"].items() if not name.startswith("floor")}
        floor = {name: r for name, r in diagnosis["references"].items() if name.startswith("floor")}
        chamfer = {int(step): r for step, r in diagnosis[student_name].items()}
        plot_distillation_curves(
            chamfer, references | floor, curve, success_references, output / f"distillation{variant}.png"
        )

    # The disturbance test: re-planning as often as the latency allows, and as trained (every n_action_steps),
    # with and without the push. The undisturbed run at the trained period is the evaluation above.
    disturbance = {}
    for base in (
        e for e in (teacher, student_density, student_1, ddim) if e.model in checkpoints and not args.no_disturbance
    ):
        latency = latency_of(base)
        config = PreTrainedConfig.from_pretrained(checkpoints[base.model])
        fastest = replan_period(latency["median_ms"], CONTROL_HZ, config.horizon - config.n_obs_steps + 1)
        short = base.name.split(",")[0]
        for period in sorted({fastest, config.n_action_steps}):
            policy_args = dict(base.policy_args)
            if period != config.n_action_steps:
                policy_args["n_action_steps"] = period
            label = f"{short}, every {period}" + (" (latency-limited)" if period == fastest else "")
            row = {"replan_every": period, "latency_limited": period == fastest}
            for disturbed in (False, True):
                row["disturbed" if disturbed else "undisturbed"] = run_eval(
                    Evaluation(label, base.model, policy_args, disturbed),
                    checkpoints[base.model],
                    output,
                    args,
                    latency,
                    args.curve_episodes,
                )
            disturbance[label] = row

    # Runs restricted with --models add to what earlier runs measured, read now: another run may have written.
    report = read_report(report_path)
    results = report.get("results", {}) | results
    disturbance = report.get("disturbance", {}) | disturbance
    report |= {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
        "extra": report.get("extra", {}) | extra,
        "success_curve": report.get("success_curve", {}) | {f"{student_name} {k}": v for k, v in curve.items()},
        "disturbance": disturbance,
    }
    write_text_atomic(report_path, json.dumps(report, indent=2))
    plot_benchmark(results, disturbance, output / "pusht.png")
    if "diagnosis" in report:
        points = success_against_error(report, report["diagnosis"])
        if points:
            path = output / "success_against_error.png"
            plot_success_against_paired_error(points, results.get(teacher.name), path)
    print(markdown_table(results))
    if extra:
        print()
        print(markdown_table(extra))
    if curve:
        print()
        print(markdown_table({f"{student_name} at step {k} (1 sample)": v for k, v in curve.items()}))
    if diagnosis is not None:
        print()
        print("| Chamfer against the teacher's samples, held-out frames | coverage | fidelity |")
        print("|---|---|---|")
        rows = dict(diagnosis["references"])
        for name, by_step in student_curves(diagnosis).items():
            rows |= {f"{name} at step {k}": v for k, v in by_step.items()}
        for name, r in rows.items():
            print(f"| {name} | {r['coverage']:.4f} | {r['fidelity']:.4f} |")
    print()
    print("| method, re-planning every k actions | chunk latency (ms) | success, undisturbed | success, disturbed |")
    print("|---|---|---|---|")
    for name, row in disturbance.items():
        cells = []
        for key in ("undisturbed", "disturbed"):
            r = row[key]
            lo, hi = r["success_ci95"]
            cells.append(f"{r['success_rate']:.1%} [{lo:.1%}, {hi:.1%}] (reward {r['mean_max_reward']:.3f})")
        latency_ms = row["undisturbed"]["chunk_latency"]["median_ms"]
        print(f"| {name} | {latency_ms:.2f} | {cells[0]} | {cells[1]} |")
    print(json.dumps(report.get("timings_s", {})))


if __name__ == "__main__":
    main()
