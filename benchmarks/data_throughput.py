"""How fast LeRobot's own loader reads the plugin's 3-D datasets: samples per second of `LeRobotDataset` with a
policy's real delta timestamps (`resolve_delta_timestamps` of the default teacher: 2 observation frames, 16
actions), through a `DataLoader` with `num_workers` 0 and 2, as `lerobot-train` reads them.

Datasets (written here unless they exist; `--baseline NAME=ROOT` adds datasets written elsewhere, e.g. by an
older checkout's writers, under the same names):
- `metaworld_*`: 10 expert episodes of button-press-v3, one 64x64 RGB-D camera (corner2), as `lerobot-flowstep
  generate-metaworld --episodes 10 --image-size 64` writes them: `cloud` with the 512-point stored cloud
  (`--pointcloud`), `nocloud` without it (the policy's point-cloud step makes it from depth), `pngrgb` with the
  cloud and RGB as PNG (`--rgb-storage image`);
- `rlbench_*`: the shared reach_target demos (2 episodes, 134 frames), 4 cameras of 128x128, as
  `lerobot-flowstep convert rlbench --cameras front,left_shoulder,right_shoulder,wrist` writes them, with
  (`--pointcloud`, 1024 points) and without the stored cloud.

Per dataset: samples/s at `num_workers` 0 and 2 (batch 64, one warm-up batch, then `--batches` timed; a
dataset whose batch of 64 would take longer than `--max-batch-seconds` by its profile gets smaller batches), a
cProfile of `__getitem__` (`profile_<name>.txt`), and for the datasets without a stored cloud the time the
policy's depth and point-cloud steps take on a batch (work that moves into the training step). Last, a short
`lerobot-train` run of the point cloud + state teacher (`configs/metaworld/teacher_pc.json` at 64 px, batch 128,
`num_workers` 0) on each MetaWorld dataset, whose logged `data_s` and `updt_s` are reported.

Every measurement is kept in `<output>/results.json` and skipped when present, so an interrupted run resumes.
Set OMP_NUM_THREADS=1: the numbers are for one core per process.

    OMP_NUM_THREADS=1 uv run python benchmarks/data_throughput.py --output outputs/data_throughput \\
        --baseline metaworld_old=/tmp/old/metaworld --baseline rlbench_old=/tmp/old/rlbench
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402
from lerobot.datasets.factory import resolve_delta_timestamps  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata  # noqa: E402

from lerobot_flowstep.constants import OBS_POINTCLOUD  # noqa: E402
from lerobot_flowstep.core.configuration_encoder import EncoderConfig  # noqa: E402
from lerobot_flowstep.policies.flowstep_teacher.configuration_flowstep_teacher import (  # noqa: E402
    FlowstepTeacherConfig,
)
from lerobot_flowstep.tools.lerobot_commands import lerobot_train  # noqa: E402

SHARED_RLBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "rlbench" / "reach_target"
RLBENCH_CAMERAS = ["front", "left_shoulder", "right_shoulder", "wrist"]
TEACHER_PC = Path(__file__).resolve().parents[1] / "configs" / "metaworld" / "teacher_pc.json"
REPO_ID = "local/throughput"


def write_datasets(data: Path) -> dict[str, Path]:
    """The new-format datasets, written unless present (about a minute each on one core)."""
    from lerobot_flowstep.metaworld.demos import generate_metaworld_dataset, metaworld_pointcloud_config
    from lerobot_flowstep.rlbench.conventions import rlbench_pointcloud_config
    from lerobot_flowstep.rlbench.converter import convert_rlbench

    cloud = metaworld_pointcloud_config(num_points=512)
    metaworld = {
        "metaworld_cloud": {"pointcloud": cloud},
        "metaworld_nocloud": {"pointcloud": None},
        "metaworld_pngrgb": {"pointcloud": cloud, "rgb_storage": "image"},
    }
    roots = {}
    for name, options in metaworld.items():
        roots[name] = data / name
        if not roots[name].exists():
            generate_metaworld_dataset(roots[name], "button-press-v3", num_episodes=10, image_size=64, **options)
    if SHARED_RLBENCH.is_dir():
        rlbench = {
            "rlbench_cloud": rlbench_pointcloud_config(cameras=RLBENCH_CAMERAS, num_points=1024),
            "rlbench_nocloud": None,
        }
        for name, pointcloud in rlbench.items():
            roots[name] = data / name
            if not roots[name].exists():
                convert_rlbench(SHARED_RLBENCH, roots[name], cameras=RLBENCH_CAMERAS, pointcloud=pointcloud)
    else:
        print(f"{SHARED_RLBENCH} is absent: the RLBench rows are left out.")
    return roots


def teacher_config() -> FlowstepTeacherConfig:
    """The default teacher (a small RGB backbone, which does not change what is read): its delta timestamps are
    what `lerobot-train` asks the dataset for."""
    return FlowstepTeacherConfig(device="cpu", encoder=EncoderConfig(vision_backbone="conv"))


def dataset_for(root: Path) -> LeRobotDataset:
    meta = LeRobotDatasetMetadata(REPO_ID, root=root)
    return LeRobotDataset(REPO_ID, root=root, delta_timestamps=resolve_delta_timestamps(teacher_config(), meta))


def throughput(root: Path, workers: int, batch_size: int, batches: int) -> dict[str, float]:
    dataset = dataset_for(root)
    # The warm-up and the timed batches come from one pass over a small dataset.
    batch_size = min(batch_size, len(dataset) // (batches + 1) // 4 * 4)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    batches_iter = iter(loader)
    next(batches_iter)  # warm-up: workers start, files open
    start, samples = time.perf_counter(), 0
    for _ in range(batches):
        samples += len(next(batches_iter)["index"])
    seconds = time.perf_counter() - start
    del batches_iter
    return {"samples_per_s": samples / seconds, "samples": samples, "seconds": seconds, "batch_size": batch_size}


def profile(root: Path, out: Path, samples: int = 16) -> dict[str, Any]:
    """cProfile of `samples` `__getitem__` calls; the top functions by own time go to `out`."""
    dataset = dataset_for(root)
    dataset[0]  # opens files outside the profile
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1))[:samples].tolist()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for i in indices:
        dataset[i]
    profiler.disable()
    per_sample = (time.perf_counter() - start) / samples
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("tottime").print_stats(15)
    stats.sort_stats("cumulative").print_stats(25)
    out.write_text(f"{samples} samples of {root}, {per_sample * 1e3:.1f} ms per sample\n\n{stream.getvalue()}")
    return {"ms_per_sample": per_sample * 1e3}


def online_cloud(root: Path, batch_size: int) -> dict[str, float]:
    """Time of the policy's depth-map and point-cloud steps on one batch of a dataset without stored clouds."""
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from lerobot_flowstep.metaworld.demos import metaworld_pointcloud_config
    from lerobot_flowstep.processor.depth_maps import DepthMapProcessorStep
    from lerobot_flowstep.processor.pointcloud import PointCloudProcessorStep
    from lerobot_flowstep.rlbench.conventions import rlbench_pointcloud_config

    dataset = dataset_for(root)
    config = teacher_config()
    rlbench = dataset.meta.robot_type == "rlbench_panda"
    config.pointcloud = (
        rlbench_pointcloud_config(cameras=RLBENCH_CAMERAS, num_points=1024)
        if rlbench
        else metaworld_pointcloud_config(num_points=512)
    )
    make_policy(config, ds_meta=dataset.meta)  # fills the depth maps and fixed cameras from the dataset
    preprocessor, _ = make_pre_post_processors(config, dataset_stats=dataset.meta.stats)
    steps = [s for s in preprocessor.steps if isinstance(s, (DepthMapProcessorStep, PointCloudProcessorStep))]
    batch = torch.utils.data.default_collate([dataset[i] for i in range(batch_size)])
    observation = {k: v for k, v in batch.items() if k.startswith("observation.")}

    def run() -> dict[str, Any]:
        out = dict(observation)
        for step in steps:
            out = step.observation(out)
        return out

    run()  # warm-up: ray caches
    start = time.perf_counter()
    made = run()
    seconds = time.perf_counter() - start
    assert made[OBS_POINTCLOUD].shape[:2] == (batch_size, config.n_obs_steps)
    return {"seconds_per_batch": seconds, "ms_per_frame": seconds / (batch_size * config.n_obs_steps) * 1e3}


_LOGGED = re.compile(r"updt_s:([0-9.]+) data_s:([0-9.]+)")


def training_step(root: Path, run_dir: Path, steps: int, batch_size: int) -> dict[str, float]:
    """`lerobot-train` of the point cloud + state teacher for a few steps; mean logged `updt_s` and `data_s`
    after the first step (which includes start-up)."""
    config = json.loads(TEACHER_PC.read_text())
    meta = LeRobotDatasetMetadata(REPO_ID, root=root)
    policy = config["policy"]
    policy["device"] = "cpu"
    policy["input_features"]["observation.depth.corner2"]["shape"] = [1, 64, 64]
    for key in ("observation.camera.corner2.intrinsics", "observation.camera.corner2.extrinsics"):
        if key in meta.features:  # a dataset in the former format: per-frame parameters
            policy["input_features"][key] = {"type": "STATE", "shape": list(meta.features[key]["shape"])}
    config["dataset"] = {"repo_id": REPO_ID, "root": str(root)}
    config.update(
        output_dir=str(run_dir / "train"),
        job_name="data_throughput",
        steps=steps,
        batch_size=batch_size,
        num_workers=0,
        log_freq=1,
        save_freq=10 * steps,
    )
    config.pop("env")
    path = run_dir / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    log = run_dir / "train.log"
    lerobot_train([f"--config_path={path}", "--save_checkpoint=false"], log, steps, f"train {root.name}")
    logged = [(float(u), float(d)) for u, d in _LOGGED.findall(log.read_text())][1:]
    if not logged:
        raise RuntimeError(f"no updt_s/data_s lines after the first step in {log}")
    return {
        "updt_s": sum(u for u, _ in logged) / len(logged),
        "data_s": sum(d for _, d in logged) / len(logged),
        "steps_averaged": len(logged),
    }


def du_kib(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/data_throughput")
    parser.add_argument("--baseline", action="append", default=[], metavar="NAME=ROOT")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3, help="timed batches after the warm-up one")
    parser.add_argument(
        "--max-batch-seconds", type=float, default=40.0, help="smaller batches for datasets slower than this"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--train-steps", type=int, default=6, help="lerobot-train steps (0: skip)")
    args = parser.parse_args()

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results_path = output / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}

    def measure(key: str, fn: Any, *fn_args: Any) -> None:
        if key in results:
            return
        print(f"measuring {key} ...", flush=True)
        results[key] = fn(*fn_args)
        print(f"  {results[key]}", flush=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    roots = {}
    for spec in args.baseline:
        name, _, root = spec.partition("=")
        roots[name] = Path(root)
    roots.update(write_datasets(output / "data"))

    for name, root in roots.items():
        measure(f"{name}/size_kib", du_kib, root)
        measure(f"{name}/profile", profile, root, output / f"profile_{name}.txt")
        # A dataset that reads slowly is timed on smaller batches (named in the result), so that a run stays
        # within minutes: at seconds per sample, the rate hardly depends on the batch size.
        per_sample_s = results[f"{name}/profile"]["ms_per_sample"] / 1e3
        batch_size = max(4, min(args.batch_size, int(args.max_batch_seconds / per_sample_s) // 4 * 4))
        for workers in args.workers:
            measure(f"{name}/workers{workers}", throughput, root, workers, batch_size, args.batches)
        if OBS_POINTCLOUD not in LeRobotDatasetMetadata(REPO_ID, root=root).features:
            measure(f"{name}/online_cloud", online_cloud, root, args.batch_size)
    if args.train_steps:
        for name, root in roots.items():
            if name.startswith("metaworld"):
                measure(f"{name}/train", training_step, root, output / "train" / name, args.train_steps, 128)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
