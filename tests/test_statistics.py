"""Benchmark statistics: the Wilson interval against its defining equation, the mean interval against a
direct computation, and the re-planning period of a policy at a control rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lerobot_flowstep.tools.latency import replan_period
from lerobot_flowstep.tools.statistics import difference_interval, mean_interval, wilson_interval


@pytest.mark.parametrize(("successes", "n"), [(0, 100), (3, 100), (50, 100), (99, 100), (7, 20)])
def test_wilson_endpoints_solve_the_score_equation(successes: int, n: int) -> None:
    # The Wilson interval is the set of p with |p_hat - p| <= z sqrt(p (1 - p) / n).
    z, p_hat = 1.96, successes / n
    lo, hi = wilson_interval(successes, n, z)
    for p in (lo, hi):
        if 0.0 < p < 1.0:
            assert abs(p_hat - p) == pytest.approx(z * math.sqrt(p * (1 - p) / n), abs=1e-12)
    assert lo <= p_hat <= hi
    inside = np.linspace(lo, hi, 7)[1:-1]
    assert np.all(np.abs(p_hat - inside) < z * np.sqrt(inside * (1 - inside) / n))


def test_wilson_known_values() -> None:
    # 0/100: the "rule of three"-like bound; 50/100: the textbook [0.404, 0.596].
    assert wilson_interval(0, 100) == pytest.approx((0.0, 0.0370), abs=1e-4)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    with pytest.raises(ValueError, match="successes=5, n=4"):
        wilson_interval(5, 4)


def test_mean_interval() -> None:
    values = np.array([0.2, 0.4, 0.9, 0.5])
    sd = math.sqrt(sum((v - 0.5) ** 2 for v in values) / 3)
    assert mean_interval(values) == pytest.approx((0.5 - 1.96 * sd / 2, 0.5 + 1.96 * sd / 2))
    assert mean_interval(np.array([0.3])) == (0.3, 0.3)
    with pytest.raises(ValueError, match="no values"):
        mean_interval(np.array([]))


def test_replan_period() -> None:
    assert replan_period(0.6, 10.0, 15) == 1  # a millisecond policy re-plans every control step
    assert replan_period(100.0, 10.0, 15) == 1  # ready exactly at the next tick
    assert replan_period(100.5, 10.0, 15) == 2
    assert replan_period(258.0, 10.0, 15) == 3
    assert replan_period(2659.0, 10.0, 15) == 15  # never beyond the chunk
    with pytest.raises(ValueError, match="control_hz > 0"):
        replan_period(1.0, 0.0, 8)


def test_difference_interval_matches_newcombes_worked_examples() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score, no continuity
    # correction): 56/70 - 48/80 -> (0.0524, 0.3339); 9/10 - 3/10 -> (0.1705, 0.8090).
    assert difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert difference_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)
    # Antisymmetric: swapping the two rates mirrors the interval.
    lo, hi = difference_interval(48, 80, 56, 70)
    assert (lo, hi) == pytest.approx((-0.3339, -0.0524), abs=1e-4)
