"""The student of one teacher checkpoint of a `metaworld_benchmark.py` run, against that checkpoint and its
one-step CFM, on the benchmark's seeds: for a teacher that succeeds part-way through its training (a checkpoint
kept by `--curve-every`), where the run's last checkpoint is not the teacher to distil.

Reads the run's task folder (its `data` and `teacher_pc`); writes `<task folder>/from_teacher_step<N>/`: the
teacher's samples cached once per frame, the student distilled from them (`configs/metaworld/student_pc.json`
with this command's budget, resumable), the three rows' evaluations (`--seeds` x `--eval-episodes`, seeds from
100,000 as in the benchmark; the teacher's first seed is the curve point's, reused) and chunk latency, and
`results.json` / `results.md` in the benchmark's format (`fidelity_table.py --metaworld` reads it).

    uv run python benchmarks/metaworld_distil.py --task-dir outputs/metaworld_strong24k/button-press-v3 \\
        --teacher-step 6000 --steps 6000 --batch-size 32 --image-size 64 --seeds 3 --eval-episodes 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from metaworld_benchmark import (
    chunk_latency_ms,
    evaluate,
    intermediate_checkpoint,
    markdown,
    run_config,
    summarize,
    train_in_memory,
)

from lerobot_flowstep.metaworld.tasks import metaworld_task
from lerobot_flowstep.tools.lerobot_commands import last_checkpoint
from lerobot_flowstep.tools.timings import record_timing, write_text_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-dir", type=Path, required=True, help="a metaworld_benchmark.py task folder")
    parser.add_argument("--teacher-step", type=int, required=True, help="the teacher checkpoint to distil")
    parser.add_argument("--steps", type=int, required=True, help="distillation steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, required=True, help="the run's --image-size")
    parser.add_argument("--episode-length", type=int, default=200)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume-every", type=int, default=250)
    args = parser.parse_args()
    task_dir, step = args.task_dir, args.teacher_step
    task, data = metaworld_task(task_dir.name).name, task_dir / "data"
    teacher = intermediate_checkpoint(task_dir / "teacher_pc", step)
    if not teacher.is_dir():
        raise SystemExit(f"{task_dir} has no teacher checkpoint at step {step} ({teacher}): see --curve-every.")
    out = task_dir / f"from_teacher_step{step}"
    student_dir = out / "student_pc"
    try:
        student = last_checkpoint(student_dir / "train")
    except FileNotFoundError:
        student = None  # trained below, outside this handler: its errors are not chained to this one
    if student is None:
        # The benchmark's student config, fields as the benchmark fills them (`run_config` reads these).
        settings = argparse.Namespace(
            steps=args.steps, batch_size=args.batch_size, image_size=args.image_size, device=args.device,
            num_workers=0, vision_backbone="conv", network="mlp",
        )  # fmt: skip
        config = run_config("student_pc", task, data, student_dir, settings, teacher=teacher)
        start = time.perf_counter()
        train_in_memory(config, student_dir, f"{task} student of teacher step {step}", args.resume_every)
        record_timing(out, "student_pc (cache and distillation)", time.perf_counter() - start)
        student = last_checkpoint(student_dir / "train")
    rows = {
        f"teacher (pc + state) at step {step}": (teacher, []),
        "student (pc + state)": (student, []),
        "1-step CFM (pc + state)": (teacher, ["--policy.num_inference_steps=1"]),
    }
    results, latency = {}, {}
    for row, (checkpoint, overrides) in rows.items():
        # The teacher's row in the benchmark's own eval folder, where its curve point already lies.
        where = task_dir if checkpoint == teacher and not overrides else out
        results[row] = {task: evaluate(row, checkpoint, overrides, task, where, args)}
        name = row.split(" (")[0].replace(" ", "_").replace("-", "")
        stats = chunk_latency_ms(checkpoint, overrides, data, task, args.device, out / f"latency_{name}.json")
        latency[row] = stats["median_ms"]
    summary = summarize(results, latency)
    report = {"settings": {k: str(v) for k, v in vars(args).items()}, "teacher": str(teacher), "summary": summary}
    table = markdown(summary, [task])
    write_text_atomic(out / "results.json", json.dumps(report, indent=2))
    write_text_atomic(out / "results.md", table)
    print(table)


if __name__ == "__main__":
    main()
