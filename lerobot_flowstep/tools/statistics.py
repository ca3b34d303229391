"""95 % intervals for the benchmark tables: success rates (binomial), their differences, and per-episode
means."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate: unlike the normal approximation it stays inside [0, 1] and
    is not empty at 0 or n successes, which is where small benchmarks often land."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}.")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference_interval(k1: int, n1: int, k2: int, n2: int, z: float = 1.96) -> tuple[float, float]:
    """Interval of the difference of two independent success rates k1/n1 - k2/n2: Newcombe's hybrid score
    method (Newcombe 1998, method 10), built from the two Wilson intervals. Like them it stays inside [-1, 1]
    and behaves at 0 and n successes, where the Wald interval of a gap between two small evaluations does not."""
    p1, p2 = k1 / n1 if n1 else 0.0, k2 / n2 if n2 else 0.0
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    return (
        d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def mean_interval(values: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation interval of a mean (sample standard deviation); a point for fewer than 2 values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_interval of no values.")
    half = z * values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else 0.0
    return (float(values.mean() - half), float(values.mean() + half))
