"""MetaWorld: the CFM teacher and the IMLE student on point cloud + state and on RGB + point cloud + state,
against one-step CFM and LeRobot's diffusion policy on RGB + state, at one training budget.

Per task:
1. `lerobot-flowstep generate-metaworld`: `--episodes` successful expert demonstrations (DP3 uses 10), with the
   fused 512-point cloud of corner2 stored per frame;
2. `lerobot-train` from `configs/metaworld/<method>.json` (written out per run with this run's task, image
   size, steps, batch size and device; the exact file is kept beside the checkpoint): the two teachers, the
   two students distilled from them, and diffusion;
3. `lerobot-eval --env.type=flowstep_metaworld`, every method on the same seeds (`--seeds` runs of
   `--eval-episodes` episodes), plus one-step CFM (each teacher with `--policy.num_inference_steps=1`, so at
   the teachers' own training budget); chunk latency at batch 1 on a dataset frame.
4. With `--curve-every k` (in-memory trainer), each teacher also keeps a checkpoint every k steps, and each is
   evaluated on the first seed's episodes: the teacher's success against its budget, which says where a teacher
   gets to a given success instead of guessing it. `--curve-now`, with the same options, evaluates the checkpoints
   saved so far while the training runs on in another process.

Every stage skips work whose output exists (datasets, checkpoints, `eval_info.json`, latency files), so an
interrupted run resumes where it stopped; with `--resume-every`, an in-memory training resumes from its last
resume point too. Results go to `<output>/results.json`, `results.md` and
`results.png` (`--report` names them, so that runs over other tasks or rows keep their own). Processes given
different `--tasks` may share one `--output` (one per core, with `OMP_NUM_THREADS=1`); a last run with every
task then only collects the table.

    uv run python benchmarks/metaworld_benchmark.py --tasks button-press-v3 drawer-open-v3 --device cuda
    uv run python benchmarks/metaworld_benchmark.py --tasks button-press-v3 --image-size 64 --steps 2000 \\
        --batch-size 32 --eval-episodes 20 --seeds 1 --vision-backbone conv --network mlp     # a CPU budget
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lerobot_flowstep.datasets.video import video_backend  # noqa: E402
from lerobot_flowstep.metaworld.demos import (  # noqa: E402
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    generate_metaworld_dataset,
    metaworld_pointcloud_config,  # noqa: E402
)
from lerobot_flowstep.metaworld.tasks import metaworld_task  # noqa: E402
from lerobot_flowstep.tools.lerobot_commands import (  # noqa: E402
    eval_args,
    last_checkpoint,
    lerobot_eval,
    lerobot_train,
)
from lerobot_flowstep.tools.statistics import wilson_interval  # noqa: E402
from lerobot_flowstep.tools.timings import record_timing, write_text_atomic  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "metaworld"
TRAINED = ("teacher_pc", "teacher_rgbpc", "student_pc", "student_rgbpc", "diffusion")
# Row name -> (checkpoint it evaluates, lerobot-eval policy overrides).
ROWS = {
    "teacher (pc + state)": ("teacher_pc", []),
    "student (pc + state)": ("student_pc", []),
    "1-step CFM (pc + state)": ("teacher_pc", ["--policy.num_inference_steps=1"]),
    "teacher (rgb + pc + state)": ("teacher_rgbpc", []),
    "student (rgb + pc + state)": ("student_rgbpc", []),
    "1-step CFM (rgb + pc + state)": ("teacher_rgbpc", ["--policy.num_inference_steps=1"]),
    "diffusion DDIM-10 (rgb + state)": ("diffusion", []),
}
# Published success (%) by MetaWorld difficulty group: DP3 paper Table I (10 demos, 3 seeds, mean of the 5 best
# of evaluations every 200 epochs), as quoted in ../shared/notes/metaworld.md.
PUBLISHED = {
    "DP3 (Ze et al. 2024)": {"easy": 90.9, "medium": 61.6, "hard": 31.7, "very_hard": 49.0},
    "Diffusion Policy, images (in DP3's Table I)": {"easy": 83.6, "medium": 31.1, "hard": 9.0, "very_hard": 26.6},
}


def run_config(
    method: str, task: str, data: Path, run_dir: Path, args: argparse.Namespace, teacher: Path | None = None
) -> Path:
    """The method's config file with this run's task, data, sizes and budget; written beside the checkpoint. A
    student distils `teacher` (default: the last checkpoint of its teacher in this task's folder)."""
    cfg = json.loads((CONFIGS / f"{method}.json").read_text())
    slug = task.removesuffix("-v3").replace("-", "_")
    cfg["dataset"] = {"repo_id": f"local/metaworld_{slug}", "root": str(data)}
    cfg["env"].update(task=task, image_size=args.image_size)
    cfg["output_dir"] = str(run_dir / "train")
    cfg["job_name"] = f"metaworld_{slug}_{method}"
    cfg.update(steps=args.steps, batch_size=args.batch_size, save_freq=args.steps, num_workers=args.num_workers)
    cfg["log_freq"] = max(1, min(200, args.steps // 10))
    policy = cfg["policy"]
    policy["device"] = args.device
    for key, feature in policy.get("input_features", {}).items():
        if key.startswith(("observation.images.", "observation.depth.")):
            feature["shape"] = [feature["shape"][0], args.image_size, args.image_size]
    if policy["type"] == "diffusion":
        policy["crop_shape"] = [int(args.image_size * 0.875)] * 2
        if args.network == "mlp":  # the CPU budget: LeRobot's smallest sensible U-Net
            policy["down_dims"] = [64, 128, 256]
    elif policy["type"] == "flowstep_teacher":
        policy["encoder"]["vision_backbone"] = args.vision_backbone
        policy["network"]["type"] = args.network
    else:  # the student inherits encoder and network from its teacher, and learns from its cached samples
        teacher = teacher or last_checkpoint(run_dir.parent / method.replace("student", "teacher") / "train")
        policy["teacher_path"] = str(teacher)
        policy["teacher_cache_path"] = str(
            teacher_cache(teacher, cfg["dataset"], run_dir / "teacher_samples.safetensors", args)
        )
    path = run_dir / "train_config_input.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def teacher_cache(teacher: Path, dataset: dict, path: Path, args: argparse.Namespace) -> Path:
    """The teacher's samples drawn once per frame (16, 10 Heun steps: the student config's defaults), as
    `lerobot-flowstep cache-teacher` draws them: online sampling would cost every distillation step as much."""
    if not path.is_file():
        from lerobot_flowstep.tools.cache_teacher import build_teacher_cache

        build_teacher_cache(str(teacher), dataset["repo_id"], Path(dataset["root"]), path, device=args.device,
                            num_samples=16, num_steps=10, solver="heun")  # fmt: skip
    return path


def check_same_budget(run_dir: Path, args: argparse.Namespace) -> None:
    """A run folder is named by method only: refuse to reuse (and report as this run's) a checkpoint trained at
    another budget."""
    path = run_dir / "train_config_input.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    wanted = {"steps": args.steps, "batch_size": args.batch_size}
    trained = {key: saved.get(key) for key in wanted}
    if trained != wanted:
        raise SystemExit(
            f"{run_dir} holds a run trained with {trained}, not this command's {wanted}: give this budget its own "
            "--output (or remove that folder)."
        )


def train(method: str, task: str, data: Path, task_dir: Path, args: argparse.Namespace) -> Path:
    run_dir = task_dir / method
    check_same_budget(run_dir, args)
    try:
        return last_checkpoint(run_dir / "train")
    except FileNotFoundError:
        pass
    config = run_config(method, task, data, run_dir, args)
    start = time.perf_counter()
    if args.trainer == "lerobot-train":
        lerobot_train([f"--config_path={config}"], run_dir / "train.log", args.steps, f"{task} {method}")
    else:
        save_every = args.curve_every if method.startswith("teacher") else 0
        train_in_memory(config, run_dir, f"{task} {method}", args.resume_every, save_every)
    record_timing(task_dir, method, time.perf_counter() - start)
    return last_checkpoint(run_dir / "train")


def intermediate_checkpoint(run_dir: Path, step: int) -> Path:
    """Where lerobot-train would put the checkpoint of `step`."""
    return run_dir / "train" / "checkpoints" / f"{step:06d}" / "pretrained_model"


def train_in_memory(config: Path, run_dir: Path, desc: str, resume_every: int = 0, save_every: int = 0) -> Path:
    """The same config trained from samples read once through `LeRobotDataset` (`tools/training.py`): on a CPU,
    `lerobot-train` spends most of a step decoding frames. Only the policy's own inputs are kept in memory.
    `resume_every`: resume points in `run_dir/resume`; `save_every`: intermediate checkpoints."""
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from lerobot_flowstep.constants import OBS_DEPTH_PREFIX, depth_map_key
    from lerobot_flowstep.tools.training import load_samples, save_checkpoint, train_policy_on_dataset

    cfg = TrainPipelineConfig.from_pretrained(config, cli_args=[])
    root = Path(cfg.dataset.root)
    meta = LeRobotDatasetMetadata(cfg.dataset.repo_id, root=root)
    keys = set(cfg.policy.input_features)
    # A camera's metric depth is made from the dataset's depth map by the policy's preprocessor.
    keys |= {depth_map_key(k.removeprefix(f"{OBS_DEPTH_PREFIX}.")) for k in keys if k.startswith(OBS_DEPTH_PREFIX)}
    samples = load_samples(cfg.dataset.repo_id, root, cfg.policy, meta, keys)

    def save_intermediate(step: int, policy, preprocessor, postprocessor) -> None:
        if save_every and step % save_every == 0 and step < cfg.steps:
            save_checkpoint(policy, preprocessor, postprocessor, intermediate_checkpoint(run_dir, step))

    _, checkpoint, _ = train_policy_on_dataset(
        cfg.policy, cfg.dataset.repo_id, root, run_dir / "train" / "checkpoints" / "last", cfg.steps, cfg.batch_size,
        cfg.seed, desc, samples, on_step=save_intermediate, resume_dir=run_dir / "resume", resume_every=resume_every,
    )  # fmt: skip
    return checkpoint


def evaluate(
    row: str, checkpoint: Path, overrides: list[str], task: str, task_dir: Path, args, seeds: int | None = None
) -> list[bool]:
    successes = []
    for seed in range(args.seeds if seeds is None else seeds):
        # Far from the demonstration seeds (0, 1, ...), the same for every method.
        eval_seed = 100_000 + 1_000 * seed
        out = task_dir / "eval" / row.replace(" ", "_").replace("(", "").replace(")", "") / f"seed{eval_seed}"
        info_file = out / "eval_info.json"
        if not info_file.is_file():
            lerobot_eval(
                [
                    *eval_args(checkpoint, "flowstep_metaworld", args.eval_episodes, 10, eval_seed, args.device),
                    *overrides,
                    f"--env.task={task}",
                    f"--env.image_size={args.image_size}",
                    f"--env.episode_length={args.episode_length}",
                ],  # fmt: skip
                out,
                task_dir / "eval" / f"{out.parent.name}_{eval_seed}.log",
                f"{task} {row} seed {eval_seed}",
            )
        info = json.loads(info_file.read_text())
        successes += [bool(s) for s in info["per_task"][0]["metrics"]["successes"]]
    return successes


def chunk_latency_ms(checkpoint: Path, overrides: list[str], data: Path, task: str, device: str, path: Path) -> dict:
    """Median `predict_action_chunk` time at batch 1 on the dataset's first frame (stored cloud: no fusion)."""
    if path.is_file():
        return json.loads(path.read_text())
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from lerobot_flowstep.tools.checkpoints import load_checkpoint
    from lerobot_flowstep.tools.latency import chunk_latency

    fields = dict(o.removeprefix("--policy.").split("=") for o in overrides)
    policy, preprocessor, _ = load_checkpoint(checkpoint, device=device, **{k: int(v) for k, v in fields.items()})
    slug = task.removesuffix("-v3").replace("-", "_")
    frame = LeRobotDataset(f"local/metaworld_{slug}", root=data, video_backend=video_backend())[0]
    batch = preprocessor({k: v[None] if isinstance(v, torch.Tensor) else v for k, v in frame.items()})
    stats = chunk_latency(policy.eval(), batch, warmup=5, repeats=50).as_dict()
    path.write_text(json.dumps(stats))
    return stats


def curve_rows(rows: list[str]) -> list[str]:
    """The rows whose trainings keep curve checkpoints: the teachers at their own step count."""
    return [r for r in rows if ROWS[r][0].startswith("teacher") and not ROWS[r][1]]


def evaluate_curve(row: str, task: str, task_dir: Path, args: argparse.Namespace) -> dict[int, float]:
    """Success on the first seed's episodes of each curve checkpoint saved so far (step -> rate)."""
    points = {}
    for step in range(args.curve_every, args.steps, args.curve_every):
        checkpoint = intermediate_checkpoint(task_dir / ROWS[row][0], step)
        if checkpoint.is_dir():
            wins = evaluate(f"{row} at step {step}", checkpoint, [], task, task_dir, args, seeds=1)
            points[step] = sum(wins) / len(wins)
    return points


def curve_line(row: str, task: str, points: dict[int, float]) -> str:
    cells = ", ".join(f"{step}: {rate:.0%}" for step, rate in sorted(points.items())) or "no checkpoint saved yet"
    return f"{row}, `{task}`, success on the first seed by training step: {cells}"


def summarize(results: dict[str, dict[str, list[bool]]], latency: dict[str, float]) -> dict[str, dict]:
    """Per row: success per task with its Wilson interval, the task average, and per difficulty group."""
    summary = {}
    for row, per_task in results.items():
        tasks = {}
        for task, successes in per_task.items():
            k, n = sum(successes), len(successes)
            low, high = wilson_interval(k, n)
            tasks[task] = {"success": k / n, "low": low, "high": high, "episodes": n}
        groups: dict[str, list[float]] = {}
        for task, r in tasks.items():
            groups.setdefault(metaworld_task(task).difficulty, []).append(r["success"])
        pooled = [s for successes in per_task.values() for s in successes]
        k, n = sum(pooled), len(pooled)
        summary[row] = {
            "tasks": tasks,
            "average": float(np.mean([r["success"] for r in tasks.values()])),
            "pooled_interval": wilson_interval(k, n),
            "groups": {g: float(np.mean(v)) for g, v in groups.items()},
            "chunk_latency_ms": latency.get(row),
        }
    return summary


def markdown(summary: dict[str, dict], tasks: list[str]) -> str:
    head = "| method | " + " | ".join(f"`{t}`" for t in tasks) + " | average (95 % CI, pooled) | chunk latency |"
    lines = [head, "|" + " --- |" * (len(tasks) + 3)]
    for row, r in summary.items():
        cells = [f"{c['success']:.0%} [{c['low']:.0%}, {c['high']:.0%}]" for c in (r["tasks"][t] for t in tasks)]
        low, high = r["pooled_interval"]
        latency = f"{r['chunk_latency_ms']:.1f} ms" if r["chunk_latency_ms"] is not None else "-"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {r['average']:.1%} [{low:.0%}, {high:.0%}] | {latency} |")
    lines += ["", "| published (10 demos) | easy | medium | hard | very hard |", "| --- | --- | --- | --- | --- |"]
    for name, groups in PUBLISHED.items():
        cells = [f"{groups[g]:.1f} %" for g in ("easy", "medium", "hard", "very_hard")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict], path: Path) -> Path:
    """Success per task and over the tasks (grouped bars, 95 % intervals), and chunk latency per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(summary)
    tasks = list(summary[rows[0]]["tasks"])
    columns = [*tasks, "average"]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(max(8.0, 1.3 * len(columns) + 5.0), 4.5), gridspec_kw={"width_ratios": [3, 1]}
    )
    width = 0.8 / len(rows)
    x = np.arange(len(columns))
    for i, row in enumerate(rows):
        cells = [summary[row]["tasks"][t] for t in tasks]
        value = np.array([c["success"] for c in cells] + [summary[row]["average"]]) * 100
        low = np.array([c["low"] for c in cells] + [summary[row]["pooled_interval"][0]]) * 100
        high = np.array([c["high"] for c in cells] + [summary[row]["pooled_interval"][1]]) * 100
        left.bar(x + (i - (len(rows) - 1) / 2) * width, value, width, yerr=[value - low, high - value],
                 capsize=2, label=row, color=f"C{i}")  # fmt: skip
    left.set_xticks(x, [c.removesuffix("-v3") for c in columns], rotation=30, ha="right")
    left.set_ylabel("success (%), 95 % interval")
    left.set_ylim(0, 100)
    left.legend(fontsize=8)
    latencies = [summary[r]["chunk_latency_ms"] or 0.0 for r in rows]
    right.barh(np.arange(len(rows)), latencies, color=[f"C{i}" for i in range(len(rows))])
    right.set_yticks([])  # the colours are the legend's
    right.invert_yaxis()
    right.set_xlabel("chunk latency (ms)")
    right.set_title("batch 1", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["button-press-v3", "drawer-open-v3", "door-open-v3",
                        "push-v3", "bin-picking-v3", "assembly-v3", "hand-insert-v3", "shelf-place-v3",
                        "stick-pull-v3"])  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("outputs/metaworld"))
    parser.add_argument("--episodes", type=int, default=10, help="expert demonstrations per task")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=24000, help="training steps of every trained method")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--vision-backbone", default="resnet18", choices=("resnet18", "conv"))
    parser.add_argument("--network", default="unet", choices=("unet", "mlp"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--trainer",
        default="lerobot-train",
        choices=("lerobot-train", "memory"),
        help="memory: the same configs trained from samples held in memory (faster on a CPU)",
    )
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="evaluation runs of --eval-episodes each")
    parser.add_argument("--episode-length", type=int, default=200)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument(
        "--resume-every", type=int, default=0, help="in-memory training: a resume point every that many steps"
    )
    parser.add_argument(
        "--curve-every",
        type=int,
        default=0,
        help="in-memory training: a teacher checkpoint every that many steps, each evaluated on the first seed",
    )
    parser.add_argument(
        "--report",
        default="results",
        help="file name (no suffix) of the table, JSON and figure: runs over other tasks or rows keep their own",
    )
    parser.add_argument(
        "--curve-now",
        action="store_true",
        help="only evaluate the curve checkpoints saved so far, into the folders the run reads (so it will not "
        "evaluate them again), while the same command trains on in another process",
    )
    args = parser.parse_args()
    if (args.resume_every or args.curve_every) and args.trainer != "memory":
        parser.error("--resume-every and --curve-every need --trainer memory (lerobot-train has its own --resume).")
    if args.curve_now and not args.curve_every:
        parser.error("--curve-now needs --curve-every (the checkpoints' spacing).")
    if args.curve_now:
        for task in (metaworld_task(t).name for t in args.tasks):
            for row in curve_rows(args.rows):
                points = evaluate_curve(row, task, args.output / task, args)
                print(curve_line(row, task, points))
        return

    args.output.mkdir(parents=True, exist_ok=True)
    evaluated = {ROWS[row][0] for row in args.rows}
    needed = evaluated | {m.replace("student", "teacher") for m in evaluated}
    results: dict[str, dict[str, list[bool]]] = {row: {} for row in args.rows}
    latency: dict[str, float] = {}
    curve: dict[str, dict[str, dict[int, float]]] = {}
    for task in args.tasks:
        task = metaworld_task(task).name
        task_dir = args.output / task
        data = task_dir / "data"
        if not (data / "meta" / "info.json").is_file():
            start = time.perf_counter()
            generate_metaworld_dataset(
                data, task, num_episodes=args.episodes, image_size=args.image_size,
                pointcloud=metaworld_pointcloud_config(num_points=512), seed=0,
            )  # fmt: skip
            record_timing(task_dir, "demos", time.perf_counter() - start)
        checkpoints = {m: train(m, task, data, task_dir, args) for m in TRAINED if m in needed}
        for row in args.rows:
            method, overrides = ROWS[row]
            results[row][task] = evaluate(row, checkpoints[method], overrides, task, task_dir, args)
            stats = chunk_latency_ms(
                checkpoints[method],
                overrides,
                data,
                task,
                args.device,
                task_dir / "eval" / f"latency_{method}{'_1step' if overrides else ''}.json",
            )
            latency.setdefault(row, stats["median_ms"])
        if args.curve_every:
            for row in curve_rows(args.rows):
                curve.setdefault(row, {})[task] = evaluate_curve(row, task, task_dir, args)
                last = results[row][task][: args.eval_episodes]  # the first seed's episodes, as the curve's
                curve.setdefault(row, {}).setdefault(task, {})[args.steps] = sum(last) / len(last)
    summary = summarize(results, latency)
    timings = {}
    for task in results[args.rows[0]]:
        path = args.output / task / "timings.json"
        timings |= {f"{task}/{k}": v for k, v in (json.loads(path.read_text()) if path.is_file() else {}).items()}
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, device {args.device}"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"settings": settings, "machine": machine, "timings_s": timings, "summary": summary,
              "workspace": [WORKSPACE_LOW, WORKSPACE_HIGH], "teacher_curve": curve}  # fmt: skip
    table = markdown(summary, [metaworld_task(t).name for t in args.tasks])
    for row, per_task in curve.items():
        for task, points in per_task.items():
            table += f"\n{curve_line(row, task, points)}\n"
    write_text_atomic(args.output / f"{args.report}.json", json.dumps(report, indent=2))
    write_text_atomic(args.output / f"{args.report}.md", table)
    plot(summary, args.output / f"{args.report}.png")
    print(table)


if __name__ == "__main__":
    main()
