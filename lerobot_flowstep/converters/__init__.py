"""Converters from third-party demonstration formats to LeRobotDataset v3.

- `rlbench`: RLBench demos (pickled observations + RGB/depth PNGs), read without RLBench, PyRep or
  CoppeliaSim; CLI `lerobot-flowstep convert rlbench` (`rlbench_cli`).
- `zarr`: Diffusion Policy / DP3 zarr replay buffers; CLI `lerobot-flowstep convert zarr` (`zarr_cli`).
"""
