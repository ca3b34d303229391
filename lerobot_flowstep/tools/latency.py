"""Wall-clock latency of a callable: warm-up, then repeated timings, reported as median and spread."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class LatencyStats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int

    @property
    def hz(self) -> float:
        return 1000.0 / self.median_ms

    def as_dict(self) -> dict:
        return {**asdict(self), "hz": self.hz}

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms [{self.p10_ms:.3f}, {self.p90_ms:.3f}]"


def measure_latency(fn: Callable[[], object], warmup: int = 20, repeats: int = 200) -> LatencyStats:
    """Time `fn()`; on CUDA the device is synchronized so that the kernel time is counted."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    p10, p50, p90 = np.percentile(times, [10, 50, 90])
    return LatencyStats(median_ms=float(p50), p10_ms=float(p10), p90_ms=float(p90), repeats=repeats)


def chunk_latency(policy: torch.nn.Module, batch: dict, warmup: int = 20, repeats: int = 200) -> LatencyStats:
    """Batch-1 latency of `policy.predict_action_chunk` on one preprocessed observation.

    The observation is given as its own history (repeated `n_obs_steps` times): LeRobot's diffusion policy
    reads the history from the batch when called outside `select_action`, and the flowstep policies accept
    either form, so every policy is timed on the same input.
    """
    n_obs = policy.config.n_obs_steps
    batch = {
        k: v.unsqueeze(1).expand(-1, n_obs, *v.shape[1:]) if k.startswith("observation.") else v
        for k, v in batch.items()
    }
    policy.reset()
    with torch.inference_mode():
        return measure_latency(lambda: policy.predict_action_chunk(batch), warmup=warmup, repeats=repeats)


def replan_period(latency_ms: float, control_hz: float, max_steps: int) -> int:
    """Actions executed from each chunk when the next chunk can only be asked for once the last one is
    computed: a policy slower than one control period holds on to its plan for ceil(latency / period) steps."""
    if latency_ms < 0 or control_hz <= 0 or max_steps < 1:
        raise ValueError(
            f"need latency_ms >= 0, control_hz > 0, max_steps >= 1; got {latency_ms}, {control_hz}, {max_steps}."
        )
    return int(min(max_steps, max(1, math.ceil(latency_ms * control_hz / 1000.0 - 1e-9))))
