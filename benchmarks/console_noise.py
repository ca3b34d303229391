"""Traceback lines a user sees on README's commands: the embedded task's (generate, train, evaluate, cache, distil,
diagnose) and MetaWorld's (generate, train, evaluate), each at a few steps or episodes so that the whole run takes
minutes. The counts do not depend on the sizes.

    uv run python benchmarks/console_noise.py --output outputs/console_noise
    uv run python benchmarks/console_noise.py --output outputs/console_noise_pyav \
        --lerobot-arg=--dataset.video_backend=pyav

Per command it counts the lines of traceback blocks (from "Traceback (most recent call last)" to the exception
line), the "Exception ignored" notes Python prints for errors in destructors at exit, and all output lines; it
prints one JSON line per command and a total, and writes them to `<output>/console_noise.json`. A command that
fails stops the run. `--lerobot-arg` is passed to every `lerobot-train` (e.g. `--dataset.video_backend=pyav`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# A traceback block: its header, the indented frame lines, and the exception line that ends it.
HEADER = "Traceback (most recent call last)"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Warning|Exit|Interrupt)\b")


def count_noise(text: str) -> dict[str, int]:
    """Traceback lines, traceback blocks and 'Exception ignored' notes in a command's output."""
    lines = text.splitlines()
    in_block, block_lines, blocks = False, 0, 0
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(HEADER):
            in_block, blocks = True, blocks + 1
        if in_block:
            block_lines += 1
            if EXCEPTION_LINE.match(stripped) and not line.startswith((" ", "\t")):
                in_block = False
    ignored = sum("Exception ignored" in line for line in lines)
    return {"traceback_lines": block_lines, "tracebacks": blocks, "exception_ignored": ignored, "lines": len(lines)}


def bin_path(name: str) -> str:
    """A console script of the running interpreter's environment."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def readme_commands(out: Path, lerobot_args: list[str], metaworld: bool) -> list[tuple[str, list[str]]]:
    flowstep, train, evaluate = bin_path("lerobot-flowstep"), bin_path("lerobot-train"), bin_path("lerobot-eval")
    data, teacher, student = out / "obstacle", out / "teacher", out / "student"
    teacher_ckpt = teacher / "checkpoints/last/pretrained_model"
    common = ["--policy.device=cpu", "--env_eval_freq=0", "--wandb.enable=false", "--batch_size=16", "--steps=2"]
    dataset = ["--dataset.repo_id=local/flowstep_obstacle", f"--dataset.root={data}"]
    eval_common = ["--eval.n_episodes=2", "--eval.batch_size=2", "--eval.use_async_envs=false", "--policy.device=cpu"]
    cache = out / "teacher_samples.safetensors"
    commands = [
        ("generate", [flowstep, "generate", "--output", str(data), "--episodes", "6"]),
        ("train teacher", [train, "--policy.type=flowstep_teacher", *dataset, f"--output_dir={teacher}", *common]),
        (
            "eval teacher",
            [evaluate, f"--policy.path={teacher_ckpt}", "--env.type=flowstep_obstacle", *eval_common],
        ),
        (
            "cache-teacher",
            [
                flowstep,
                "cache-teacher",
                "--teacher-path",
                str(teacher_ckpt),
                "--dataset-repo-id",
                "local/flowstep_obstacle",
                "--dataset-root",
                str(data),
                "--output",
                str(cache),
            ],
        ),
        (
            "train student",
            [
                train,
                "--policy.type=imle_student",
                f"--policy.teacher_path={teacher_ckpt}",
                f"--policy.teacher_cache_path={cache}",
                *dataset,
                f"--output_dir={student}",
                *common,
            ],
        ),
        (
            "eval student",
            [
                evaluate,
                f"--policy.path={student / 'checkpoints/last/pretrained_model'}",
                "--env.type=flowstep_obstacle",
                *eval_common,
            ],
        ),
        (
            "diagnose",
            [
                flowstep,
                "diagnose",
                "--policy-path",
                str(student / "checkpoints/last/pretrained_model"),
                "--teacher-path",
                str(teacher_ckpt),
                "--dataset-repo-id",
                "local/flowstep_obstacle",
                "--dataset-root",
                str(data),
                "--episodes",
                "0",
                "--num-frames",
                "8",
                "--num-samples",
                "4",
                "--rollouts",
                "2",
            ],
        ),
    ]
    if metaworld:
        mw_data, mw_teacher = out / "metaworld/data", out / "metaworld/teacher_pc"
        commands += [
            (
                "generate-metaworld",
                [
                    flowstep,
                    "generate-metaworld",
                    "--task",
                    "button-press-v3",
                    "--episodes",
                    "1",
                    "--pointcloud",
                    "--output",
                    str(mw_data),
                ],
            ),
            (
                "train metaworld teacher",
                [
                    train,
                    f"--config_path={CONFIGS / 'metaworld/teacher_pc.json'}",
                    "--dataset.repo_id=local/mw",
                    f"--dataset.root={mw_data}",
                    "--env.task=button-press-v3",
                    f"--output_dir={mw_teacher}",
                    "--steps=2",
                    "--batch_size=4",
                    "--num_workers=0",
                    "--save_freq=2",
                    "--policy.device=cpu",
                ],
            ),
            (
                "eval metaworld teacher",
                [
                    evaluate,
                    f"--policy.path={mw_teacher / 'checkpoints/last/pretrained_model'}",
                    "--env.type=flowstep_metaworld",
                    "--env.task=button-press-v3",
                    "--eval.n_episodes=1",
                    "--eval.batch_size=1",
                    "--eval.use_async_envs=false",
                    "--env.episode_length=5",
                    "--policy.device=cpu",
                ],
            ),
        ]
    # lerobot-train takes the extra arguments (a dataset's decoder is a training option).
    return [(name, cmd + lerobot_args if cmd[0] == train else cmd) for name, cmd in commands]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="a scratch folder (replaced)")
    parser.add_argument("--lerobot-arg", action="append", default=[], help="passed to every lerobot-train")
    parser.add_argument("--no-metaworld", action="store_true", help="leave out the MetaWorld commands")
    args = parser.parse_args()
    out = Path(args.output).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    for name, cmd in readme_commands(out, args.lerobot_arg, metaworld=not args.no_metaworld):
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        (out / f"{name.replace(' ', '_')}.log").write_text(proc.stdout)
        if proc.returncode != 0:
            sys.exit(f"'{name}' failed ({proc.returncode}); its output: {out / name.replace(' ', '_')}.log")
        row = {"command": name, **count_noise(proc.stdout)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    total = {"command": "total", **{k: sum(r[k] for r in rows) for k in rows[0] if k != "command"}}
    print(json.dumps(total))
    (out / "console_noise.json").write_text(json.dumps(rows + [total], indent=2))


if __name__ == "__main__":
    main()
