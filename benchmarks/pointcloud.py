"""The point-cloud step at the RLBench size: speed and quality of each sampler setting.

Real frames of the shared RLBench demos (4 cameras of 128x128 metric depth with per-frame camera
parameters, the RLBench configs' workspace bounds, 1,024 points). For each setting of the step (`sampler`,
`voxel_size`) it reports the median time of `PointCloudProcessorStep.observation` over the frames and the
coverage radius (largest distance from any cropped input point to its nearest sample) relative to exact
farthest-point sampling of the same cropped cloud. With open3d importable it also times open3d's voxel
down-sampling against the torch one on the same clouds.

    uv run python benchmarks/pointcloud.py --threads 1 --output outputs/benchmarks/pointcloud.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lerobot_flowstep.constants import OBS_POINTCLOUD, depth_key, extrinsics_key, intrinsics_key
from lerobot_flowstep.core.geometry import (
    coverage_radius,
    depth_to_world_points,
    farthest_point_sample,
    in_bounds,
    voxel_downsample,
)
from lerobot_flowstep.processor.pointcloud import PointCloudProcessorStep
from lerobot_flowstep.rlbench.conventions import DEFAULT_BOUNDS_HIGH, DEFAULT_BOUNDS_LOW
from lerobot_flowstep.rlbench.demo_files import discover_episodes, read_episode

CAMERAS = ("front", "left_shoulder", "right_shoulder", "wrist")
TASK = Path(__file__).resolve().parents[2] / "shared/data/rlbench/reach_target"
SETTINGS = (
    ("fpsample", None),
    ("fpsample", 0.005),
    ("fpsample", 0.0075),
    ("fpsample", 0.01),
    ("torch", 0.01),
    ("torch", None),
)


def frames(task: Path, every: int) -> list[dict[str, torch.Tensor]]:
    _, episodes = discover_episodes(task)
    out = []
    for episode in episodes:
        arrays = read_episode(episode, CAMERAS)
        out += [arrays.observation(t, CAMERAS) for t in range(0, arrays.num_frames, every)]
    return out


def cropped(observation: dict[str, torch.Tensor]) -> torch.Tensor:
    points = []
    for cam in CAMERAS:
        world, valid = depth_to_world_points(
            observation[depth_key(cam)][0, 0], observation[intrinsics_key(cam)][0], observation[extrinsics_key(cam)][0]
        )
        points.append(world[valid & in_bounds(world, DEFAULT_BOUNDS_LOW, DEFAULT_BOUNDS_HIGH)])
    return torch.cat(points)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=str(TASK), help="RLBench task folder (variation*/episodes/episode*)")
    parser.add_argument("--every", type=int, default=10, help="use every N-th frame")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per frame and setting")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    observations = frames(Path(args.task), args.every)
    clouds = [cropped(o) for o in observations]
    print(f"{len(observations)} frames, {int(np.mean([len(c) for c in clouds])):,} cropped points on average")
    exact = [
        coverage_radius(c, c[farthest_point_sample(c, 1024, backend="torch")])
        for c in tqdm(clouds, desc="exact FPS (reference)")
    ]
    rows = []
    for sampler, voxel in SETTINGS:
        step = PointCloudProcessorStep(
            cameras=list(CAMERAS),
            num_points=1024,
            bounds_low=list(DEFAULT_BOUNDS_LOW),
            bounds_high=list(DEFAULT_BOUNDS_HIGH),
            sampler=sampler,
            voxel_size=voxel,
        )
        repeats = args.repeats if sampler != "torch" else 2
        times, ratios = [], []
        for observation, cloud, reference in zip(observations, clouds, exact, strict=True):
            times.append(median_ms(lambda o=observation, s=step: s.observation(dict(o)), repeats))
            ratios.append(coverage_radius(cloud, step.observation(dict(observation))[OBS_POINTCLOUD][0]) / reference)
        row = {
            "sampler": sampler,
            "voxel_size": voxel,
            "median_ms": float(np.median(times)),
            "coverage_ratio_mean": float(np.mean(ratios)),
            "coverage_ratio_max": float(np.max(ratios)),
        }
        rows.append(row)
        print(
            f"sampler={sampler:<8} voxel={voxel!s:<7} step {row['median_ms']:8.2f} ms   coverage / exact FPS: "
            f"mean {row['coverage_ratio_mean']:.3f}, max {row['coverage_ratio_max']:.3f}",
            flush=True,
        )
    voxel_rows = []
    open3d = None
    if importlib.util.find_spec("open3d") is not None:
        try:
            import open3d
        except OSError as err:  # its wheel links libusb-1.0, a system library
            print(f"open3d is installed but does not import ({err}); install libusb-1.0-0 to time it")
    if open3d is not None:
        for size in (0.005, 0.01):
            torch_ms = np.median([median_ms(lambda c=c, s=size: voxel_downsample(c, s), args.repeats) for c in clouds])

            def o3d(c: torch.Tensor, s: float = size) -> np.ndarray:
                cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(c.numpy().astype(np.float64)))
                return np.asarray(cloud.voxel_down_sample(s).points)

            o3d_ms = np.median([median_ms(lambda c=c: o3d(c), args.repeats) for c in clouds])
            voxel_rows.append({"voxel_size": size, "torch_ms": float(torch_ms), "open3d_ms": float(o3d_ms)})
            print(f"voxel {size}: torch {torch_ms:.2f} ms, open3d {o3d_ms:.2f} ms (legacy API, float64 copy included)")
    elif importlib.util.find_spec("open3d") is None:
        print("open3d is not installed here: its voxel down-sampling was not timed")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        meta = {"frames": len(observations), "threads": torch.get_num_threads(), "torch": torch.__version__}
        Path(args.output).write_text(json.dumps({**meta, "rows": rows, "voxel": voxel_rows}, indent=2))


if __name__ == "__main__":
    main()
