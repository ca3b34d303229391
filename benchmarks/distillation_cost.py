"""Cost of one distillation step with teacher samples drawn online vs looked up in the cache.

    uv run python benchmarks/distillation_cost.py --teacher-path outputs/demo/teacher/pretrained_model \
        --cache outputs/demo/teacher/teacher_samples.safetensors \
        --dataset-root outputs/demo/data_2modes_200ep_seed0
"""

from __future__ import annotations

import argparse
import time

import torch
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot.policies.factory import make_policy, make_pre_post_processors

from lerobot_flowstep.policies.imle_student.configuration_imle_student import ImleStudentConfig
from lerobot_flowstep.tools.training import load_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-path", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--dataset-root", required=True)
    parser.add_argument("--dataset-repo-id", default="local/flowstep_obstacle")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    meta = LeRobotDatasetMetadata(args.dataset_repo_id, root=args.dataset_root)
    samples = None
    for cache in (None, args.cache):
        cfg = ImleStudentConfig(device="cpu", teacher_path=args.teacher_path, teacher_cache_path=cache)
        policy = make_policy(cfg, ds_meta=meta)
        preprocessor, _ = make_pre_post_processors(cfg, dataset_stats=meta.stats)
        if samples is None:
            samples = load_samples(args.dataset_repo_id, args.dataset_root, cfg, meta)
            frames = samples["index"].shape[0]
            processed = {
                k: v for k, v in preprocessor(dict(samples)).items() if isinstance(v, torch.Tensor) and len(v) == frames
            }
        optimizer = torch.optim.AdamW(policy.parameters(), 1e-4)
        policy.train()
        times = []
        for _ in range(args.steps + 5):
            batch = {k: v[torch.randint(0, frames, (args.batch_size,))] for k, v in processed.items()}
            start = time.perf_counter()
            loss, _ = policy.forward(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        median = sorted(times[5:])[len(times[5:]) // 2] * 1000
        print(f"{'cached' if cache else 'online'} teacher samples: {median:.0f} ms per distillation step")


if __name__ == "__main__":
    main()
