"""Which decoder reads LeRobot's depth video faster here: torchcodec or pyav.

    uv run python benchmarks/video_decoders.py --threads 1
    # torchcodec needs FFmpeg's shared libraries (Debian 12: the libav* packages `apt-get install ffmpeg` pulls in)

Writes a small dataset with LeRobot 0.6.1's own API (`hw_to_dataset_features`, `LeRobotDataset.create`,
`add_frame`): one RGB camera `top` and its depth `top_depth`, a (H, W, 1) camera that `hw_to_dataset_features`
flags `is_depth_map`, given as uint16 millimetres, so that LeRobot encodes it as lossless HEVC in gray12le. Then
times random-access reads, as training reads, with each backend that loads: whole frames through
`LeRobotDataset.__getitem__` (`video_backend=`), and each video alone through LeRobot's `decode_video_frames`.
Prints JSON lines (median and mean ms per read over `--reads` reads after a warm-up).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO_ID = "local/depth_video_bench"
TASK = "depth video benchmark"


def torchcodec_loads() -> bool:
    try:
        importlib.import_module("torchcodec")
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def scene(t: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3) and depth uint16 mm (H, W, 1) of a tilted table and a sphere moving over it."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float32) / size
    depth = 800.0 + 400.0 * v  # a table seen from above and in front: 0.8-1.2 m
    cu, cv = 0.5 + 0.3 * np.cos(t / 15), 0.5 + 0.3 * np.sin(t / 15)
    inside = (u - cu) ** 2 + (v - cv) ** 2 < 0.02
    depth = np.where(
        inside, depth - 150.0 * np.sqrt(np.clip(0.02 - (u - cu) ** 2 - (v - cv) ** 2, 0, None)) - 100.0, depth
    )
    rgb = np.stack([depth / 1200 * 255, inside * 200.0, 255 - depth / 1200 * 255], axis=-1)
    return rgb.astype(np.uint8), depth.astype(np.uint16)[..., None]


def make_dataset(root: Path, episodes: int, frames: int, size: int):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.feature_utils import hw_to_dataset_features

    observation = {"x": float, "y": float, "top": (size, size, 3), "top_depth": (size, size, 1)}
    features = {
        **hw_to_dataset_features(observation, "observation", use_video=True),
        **hw_to_dataset_features({"dx": float, "dy": float}, "action"),
    }
    assert features["observation.images.top_depth"]["info"]["is_depth_map"]
    dataset = LeRobotDataset.create(REPO_ID, fps=30, features=features, root=root, use_videos=True)
    for _ in range(episodes):
        for t in range(frames):
            rgb, depth = scene(t, size)
            dataset.add_frame(
                {
                    "observation.state": np.array([t, -t], dtype=np.float32),
                    "observation.images.top": rgb,
                    "observation.images.top_depth": depth,
                    "action": np.array([1.0, -1.0], dtype=np.float32),
                    "task": TASK,
                }
            )
        dataset.save_episode()
    dataset.finalize()
    return dataset


def timed(call: Callable[[int], object], reads: int, warmup: int = 5) -> dict:
    for i in range(warmup):
        call(i)
    times = []
    for i in range(reads):
        start = time.perf_counter()
        call(i)
        times.append(1e3 * (time.perf_counter() - start))
    return {"median_ms": round(statistics.median(times), 2), "mean_ms": round(statistics.fmean(times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--frames", type=int, default=150, help="frames per episode")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--reads", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.video_utils import decode_video_frames, get_video_info

    backends = ["pyav", *(["torchcodec"] if torchcodec_loads() else [])]
    print(json.dumps({"backends_that_load": backends}))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        start = time.perf_counter()
        make_dataset(root, args.episodes, args.frames, args.size)
        write_s = time.perf_counter() - start
        depth_video = next(root.glob("videos/observation.images.top_depth/**/*.mp4"))
        rgb_video = next(root.glob("videos/observation.images.top/**/*.mp4"))
        info = get_video_info(depth_video)
        print(
            json.dumps(
                {"written_s": round(write_s, 1), "depth_video": {k: v for k, v in info.items() if "video." in k}}
            )
        )
        total = args.episodes * args.frames
        order = np.random.default_rng(0).integers(0, total, size=args.reads + 5)
        in_file = np.random.default_rng(1).integers(0, args.frames, size=args.reads + 5)  # first episode's frames
        if "torchcodec" in backends:
            # What torchcodec itself makes of the depth stream, beside the 12-bit codes pyav reads.
            from torchcodec.decoders import VideoDecoder

            codes = decode_video_frames(depth_video, [0.0], 1e-4, "pyav", is_depth=True)
            codes_dtype, codes = str(codes.dtype), codes.int()  # torch has no min() of uint16
            own = VideoDecoder(str(depth_video))[0]
            print(
                json.dumps(
                    {
                        "depth frame 0": {
                            "pyav (LeRobot)": [codes_dtype, list(codes.shape), int(codes.min()), int(codes.max())],
                            "torchcodec VideoDecoder": [
                                str(own.dtype),
                                list(own.shape),
                                int(own.min()),
                                int(own.max()),
                            ],
                        }
                    }
                )
            )
        for backend in backends:
            dataset = LeRobotDataset(REPO_ID, root=root, video_backend=backend)
            frame = timed(lambda i, d=dataset: d[int(order[i])], args.reads)
            depth = timed(
                lambda i, b=backend: decode_video_frames(depth_video, [float(in_file[i]) / 30], 1e-4, b, is_depth=True),
                args.reads,
            )
            rgb = timed(
                lambda i, b=backend: decode_video_frames(rgb_video, [float(in_file[i]) / 30], 1e-4, b), args.reads
            )
            size = f"{args.size}x{args.size}"
            for what, row in (
                ("frame (RGB + depth + state)", frame),
                (f"depth video {size}", depth),
                (f"RGB video {size}", rgb),
            ):
                print(json.dumps({"backend": backend, "read": what, **row}))


if __name__ == "__main__":
    main()
