"""Converters from third-party demonstration formats to LeRobotDataset v3.

- `rlbench`: RLBench demos (pickled observations + RGB/depth PNGs), read without RLBench, PyRep or
  CoppeliaSim (`convert_rlbench`, CLI `lerobot-flowstep convert rlbench`).
- `zarr`: Diffusion Policy / DP3 zarr replay buffers (`convert_zarr`).

Names are resolved lazily so that importing one converter never depends on the other's imports.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RLBENCH_CAMERAS": "rlbench",
    "ConversionSummary": "rlbench",
    "GeometryReport": "rlbench",
    "PointCloudOptions": "rlbench",
    "RLBenchDataError": "rlbench",
    "check_rlbench_geometry": "rlbench",
    "convert_rlbench": "rlbench",
    "MAPPING_PRESETS": "zarr",
    "ArrayMapping": "zarr",
    "ZarrConversionSummary": "zarr",
    "ZarrFormatError": "zarr",
    "convert_zarr": "zarr",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
