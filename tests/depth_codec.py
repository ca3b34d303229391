"""The read-back bound of LeRobot's depth video, from its quantizer's formula (`lerobot.datasets.depth_utils`):
12-bit codes, q = rint(4095 * (ln(z + shift) - ln(depth_min + shift)) / L), L = ln((depth_max + shift) /
(depth_min + shift)), so a depth z inside the range reads back within half a quantum of ln(z + shift):
|z' - z| <= (z + shift) * (exp(L / 4095 / 2) - 1). Read in millimetres, LeRobot also rounds to whole mm."""

from __future__ import annotations

import math

import numpy as np
from lerobot.configs.video import DEPTH_QMAX, DepthEncoderConfig

# float32 arithmetic in the quantizer moves a code by far less than this share of a quantum.
_FLOAT_SLACK = 1.01


def depth_read_back_bound(depth_m: np.ndarray, info: dict, unit: str = "mm") -> np.ndarray:
    """Largest error, in metres, of each pixel of `depth_m` read back from a depth video whose feature info is
    `info`, in `unit`."""
    encoder = DepthEncoderConfig.from_video_info(info)
    assert encoder.use_log, "the bound is for LeRobot's default log quantizer"
    span = math.log((encoder.depth_max + encoder.shift) / (encoder.depth_min + encoder.shift))
    half_quantum = (np.asarray(depth_m, dtype=np.float64) + encoder.shift) * math.expm1(
        _FLOAT_SLACK * span / DEPTH_QMAX / 2
    )
    return half_quantum + (5e-4 if unit == "mm" else 0.0) + 1e-6


def in_range(depth_m: np.ndarray, info: dict) -> np.ndarray:
    """The pixels the quantizer keeps (the others are clipped to its ends)."""
    encoder = DepthEncoderConfig.from_video_info(info)
    return (depth_m > encoder.depth_min) & (depth_m < encoder.depth_max)
