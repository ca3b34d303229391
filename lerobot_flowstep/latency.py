"""Wall-clock latency of a callable: warm-up, then repeated timings, reported as median and spread."""

from __future__ import annotations

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
