"""The finiteness check every converter runs on what it writes: a NaN or inf in an action or a state
becomes an all-NaN `stats.json` and a NaN loss at every training step, so it is refused at the source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NonFinite:
    """Where the first non-finite value of an episode's arrays is."""

    key: str
    frame: int
    value: float

    def describe(self) -> str:
        return f"'{self.key}' holds {self.value} at frame {self.frame}"


def first_nonfinite(arrays: Mapping[str, np.ndarray]) -> NonFinite | None:
    """The first (key, frame) whose floating-point array (frames first) holds NaN or inf, else None;
    integer and image arrays cannot, and are skipped."""
    for key, array in arrays.items():
        array = np.asarray(array)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        if not finite.all():
            frame = int(np.argmin(finite))
            bad = array.reshape(len(array), -1)[frame]
            return NonFinite(key, frame, float(bad[~np.isfinite(bad)][0]))
    return None
